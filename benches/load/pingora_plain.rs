//! The floor under fhirwall in the load benchmark: pingora 0.9 as a plain reverse proxy, with
//! the same server settings as fhirwall (one thread, keep-alive to the backend) and no checks.
//! `benches/load/run` builds it (`cargo build --release --example pingora_plain`) and measures
//! it next to nginx and HAProxy, so what pingora itself costs per request is a number.
//!
//! Usage: `pingora_plain LISTEN BACKEND [work_stealing]` (addresses as `127.0.0.1:PORT`).

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The same allocator as the fhirwall binary, so the difference is the gateway's own work.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Plain {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.backend.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, backend) = match (args.get(1), args.get(2)) {
        (Some(l), Some(b)) => (l.clone(), b.clone()),
        _ => {
            eprintln!("usage: pingora_plain LISTEN BACKEND [work_stealing]");
            std::process::exit(64);
        }
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: args.get(3).map(|s| s == "work_stealing").unwrap_or(true),
        pid_file: std::env::temp_dir()
            .join(format!("pingora-plain-{}.pid", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("pingora-plain-{}.sock", std::process::id()))
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Plain { backend });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
