# An SMTP server that is not ours (aiosmtpd), for the email tests: saves each message
# as DIR/NNNN.json {"from","to","data"}; with USER:PASS it requires AUTH. RCPT to
# tempfail@... answers 451, to reject@... 550. Prints "ready" once listening.
# Usage: python smtp_sink.py PORT DIR [user:pass]   (from /work/shared/CHANNELS.md)
import json, pathlib, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
creds = tuple(sys.argv[3].encode().split(b":", 1)) if len(sys.argv) > 3 else None
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
kw = dict(authenticator=check, auth_required=True, auth_require_tls=False) if creds else {}
out.mkdir(parents=True, exist_ok=True)
ctl = Controller(Save(), hostname="127.0.0.1", port=port, **kw); ctl.start()
print("ready", flush=True); threading.Event().wait()
