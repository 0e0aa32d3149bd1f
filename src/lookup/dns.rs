//! Keys from DNS, through hickory-resolver's async resolver driven from the calling thread.
//!
//! Owns the resolver setup and the mapping of its answers and errors to [`LookupError`]; does
//! not cache (that is [`super::KeyCache`]).

use crate::dkim::verify::{KeyLookup, LookupError};
use std::net::SocketAddr;
use std::time::Duration;

/// Keys from DNS.
///
/// hickory's blocking `Resolver` runs every lookup under one mutex: a lookup that waits for a
/// timeout would hold up every other thread's. Here each calling thread drives its own lookup
/// (`block_on` of a multi-thread runtime runs the future on the caller), and the runtime's two
/// threads only drive the sockets and timers, so lookups wait for their own answers only.
pub struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: hickory_resolver::TokioAsyncResolver,
}

impl Dns {
    /// A resolver using `servers` (host:port), or the system's `/etc/resolv.conf` when empty;
    /// each query waits `timeout` and is tried `attempts` times.
    pub fn new(servers: &[SocketAddr], timeout: Duration, attempts: usize) -> std::io::Result<Dns> {
        use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
        let (config, mut opts) = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| std::io::Error::other(format!("cannot read the system DNS configuration: {e}")))?
        } else {
            let mut c = ResolverConfig::new();
            for s in servers {
                c.add_name_server(NameServerConfig::new(*s, Protocol::Udp));
                c.add_name_server(NameServerConfig::new(*s, Protocol::Tcp));
            }
            (c, ResolverOpts::default())
        };
        opts.timeout = timeout;
        opts.attempts = attempts;
        // Names are absolute: no search-list expansion of selector._domainkey.domain.
        opts.ndots = 0;
        opts.cache_size = 0; // our own cache holds parsed keys
                             // 2048-bit and larger keys do not fit a 512-byte answer; TCP is the fallback.
        opts.edns0 = true;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dkimpress-dns")
            .enable_all()
            .build()?;
        let resolver = {
            let _entered = runtime.enter();
            hickory_resolver::TokioAsyncResolver::tokio(config, opts)
        };
        Ok(Dns { runtime, resolver })
    }
}

impl KeyLookup for Dns {
    fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, LookupError> {
        use hickory_resolver::error::ResolveErrorKind;
        use hickory_resolver::proto::op::ResponseCode;
        match self.runtime.block_on(self.resolver.txt_lookup(format!("{name}."))) {
            // A TXT record of several strings is one value: concatenate (RFC 6376 §3.6.2.2).
            Ok(answer) => {
                Ok(answer.iter().map(|txt| txt.txt_data().iter().flat_map(|s| s.iter().copied()).collect()).collect())
            }
            Err(e) => match e.kind() {
                ResolveErrorKind::NoRecordsFound { response_code, .. }
                    if matches!(*response_code, ResponseCode::NXDomain | ResponseCode::NoError) =>
                {
                    Err(LookupError::NotFound)
                }
                ResolveErrorKind::NoRecordsFound { response_code, .. } => {
                    let code = match *response_code {
                        ResponseCode::ServFail => "SERVFAIL".to_string(),
                        ResponseCode::Refused => "REFUSED".to_string(),
                        other => format!("{other:?}"),
                    };
                    Err(LookupError::Temporary(format!("DNS answered {code}")))
                }
                ResolveErrorKind::Timeout => Err(LookupError::Temporary("DNS timeout".into())),
                _ => Err(LookupError::Temporary(e.to_string())),
            },
        }
    }
}
