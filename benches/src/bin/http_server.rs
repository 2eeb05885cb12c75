//! The load-test server of the HTTP-layer benchmark (issue 3): the app of one variant,
//! served over TCP on 127.0.0.1 by one tokio worker (a current-thread runtime), for `wrk`.
//!
//! ```text
//! http_server <VARIANT> [PORT]   (VARIANT: see src/http_app.rs)
//! ```
//!
//! Prints `listening on 127.0.0.1:PORT` once bound (PORT 0, the default, picks a free one).
//! On SIGTERM or Ctrl-C it stops and prints what it metered (monetized variants), so a load
//! run can check that every request was identified and metered.
//! `benches/scripts/http_load.sh` starts one per variant, pinned with `taskset -c 0`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

#[path = "../http_app.rs"]
#[allow(dead_code)] // the request builders serve the in-process measurements
mod http_app;

use axum::serve::ListenerExt;
use http_app::Variant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(port)) = (
        args.get(1).and_then(|v| Variant::parse(v)),
        args.get(2).map_or(Some(0), |p| p.parse::<u16>().ok()),
    ) else {
        eprintln!("usage: http_server <{}> [PORT]", Variant::names());
        return ExitCode::from(2);
    };
    let (app, engine) = http_app::app(variant);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        match app {
            http_app::App::Routed(app) if variant.connect_info() => {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown())
                    .await
            }
            http_app::App::Routed(app) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown())
                    .await
            }
            http_app::App::Wrapped(app) => {
                axum::serve(listener, app.into_make_service())
                    .with_graceful_shutdown(shutdown())
                    .await
            }
            http_app::App::Governed(app) => {
                axum::serve(listener, tower::make::Shared::new(app))
                    .with_graceful_shutdown(shutdown())
                    .await
            }
        }
    });
    if let Err(e) = served {
        eprintln!("http_server: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(engine) = engine {
        let (calls, second) = http_app::metered(&engine);
        let name = if variant.tokens() {
            "tokens"
        } else {
            "requests"
        };
        println!("metered api_calls={calls} {name}={second}");
    }
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
