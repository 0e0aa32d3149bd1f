//! A small authoritative DNS server on 127.0.0.1 for tests: TXT answers (cut into strings of
//! at most `chunk` octets, to exercise multi-string records), NXDOMAIN, SERVFAIL, and silence
//! (a timeout), for exact names or `*.zone`. Enough of RFC 1035 for one question per query; nothing leaves loopback.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub enum Answer {
    Txt(Vec<Vec<u8>>),
    NxDomain,
    ServFail,
    Timeout,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `records` (names without the final dot, any case). Unknown names: NXDOMAIN.
    pub fn start(records: HashMap<String, Answer>, chunk: usize) -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let records: HashMap<String, Answer> = records.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                if let Some(reply) = answer(&buf[..n], &records, chunk) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        DnsServer { addr, stop, handle: Some(handle) }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn answer(q: &[u8], records: &HashMap<String, Answer>, chunk: usize) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // Question: labels, then type and class.
    let mut i = 12;
    let mut labels = vec![];
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let name = labels.join(".");
    // `*.zone` answers for every name under the zone (a black hole for a whole domain).
    let wild = || {
        records
            .iter()
            .find(|(k, _)| k.strip_prefix('*').is_some_and(|z| z.starts_with('.') && name.ends_with(z)))
            .map(|(_, v)| v)
    };
    let (rcode, txts) = match records.get(&name).or_else(wild) {
        Some(Answer::Timeout) => return None,
        Some(Answer::ServFail) => (2u16, vec![]),
        Some(Answer::NxDomain) | None => (3, vec![]),
        Some(Answer::Txt(v)) if qtype == 16 => (0, v.clone()),
        Some(Answer::Txt(_)) => (0, vec![]),
    };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]); // id
    let rd = u16::from_be_bytes([q[2], q[3]]) & 0x0100;
    r.extend_from_slice(&(0x8000 | 0x0400 | rd | 0x0080 | rcode).to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(txts.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..question_end)?);
    for value in txts {
        let mut rdata = vec![];
        for piece in value.chunks(chunk.clamp(1, 255)) {
            rdata.push(piece.len() as u8);
            rdata.extend_from_slice(piece);
        }
        if value.is_empty() {
            rdata.push(0);
        }
        r.extend_from_slice(&[0xC0, 0x0C, 0, 16, 0, 1, 0, 0, 0, 60]);
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    Some(r)
}
