# An SMTP server that is not ours (aiosmtpd), for the email tests: saves each message
# as DIR/NNNN.json {"from","to","data"}; with USER:PASS it requires AUTH. RCPT to
# tempfail@... answers 451, to reject@... 550. Prints "ready" once listening.
# With `starttls CERT KEY` it requires STARTTLS (and offers AUTH only after it); with
# `smtps CERT KEY` it speaks TLS from the first byte (implicit TLS).
# Usage: python smtp_sink.py PORT DIR [user:pass|-] [starttls|smtps CERT KEY]
# (from /work/shared/CHANNELS.md)
import json, pathlib, ssl, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
creds = tuple(sys.argv[3].encode().split(b":", 1)) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
mode = sys.argv[4] if len(sys.argv) > 4 else None
class Save:
    async def handle_RCPT(self, server, session, env, addr, opts):
        if addr.startswith("tempfail@"): return "451 4.3.0 Try later"
        if addr.startswith("reject@"): return "550 5.1.1 No such user"
        env.rcpt_tos.append(addr); return "250 OK"
    async def handle_DATA(self, server, session, env):
        n = len(list(out.iterdir()))
        (out / f"{n:04}.json").write_text(json.dumps({"from": env.mail_from, "to": env.rcpt_tos,
            "data": env.original_content.decode("utf-8", "replace")}))
        return "250 OK"
def check(server, session, env, mech, d):  # on failure handled=False, else no 535 is sent
    ok = isinstance(d, LoginPassword) and (d.login, d.password) == creds
    return AuthResult(success=ok, handled=False)
# With implicit TLS aiosmtpd does not count the session as TLS for auth_require_tls
# (only STARTTLS sets it), though every byte is encrypted: AUTH is offered there anyway.
kw = dict(authenticator=check, auth_required=True, auth_require_tls=mode == "starttls") if creds else {}
if mode:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[5], sys.argv[6])
    if mode == "starttls": kw.update(tls_context=ctx, require_starttls=True)
    elif mode == "smtps": kw.update(ssl_context=ctx)
    else: sys.exit(f"unknown mode {mode}")
out.mkdir(parents=True, exist_ok=True)
ctl = Controller(Save(), hostname="127.0.0.1", port=port, **kw); ctl.start()
print("ready", flush=True); threading.Event().wait()
