//! A fault-injecting HTTP/1.1 proxy in front of a real registry. One request
//! per upstream connection (`Connection: close`), so faults can be aimed at
//! exactly the requests a test names.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What to break.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Cut the first `times` blob upload PUTs after `bytes` of their body.
    ResetUploadAfter { bytes: usize, times: usize },
}

pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// How many requests were broken.
    pub triggered: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(upstream: &str, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let triggered = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_string();
        let counter = triggered.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, counter) = (upstream.clone(), counter.clone());
                std::thread::spawn(move || serve(client, &upstream, fault, &counter));
            }
        });
        Proxy { host, triggered }
    }
}

fn serve(client: TcpStream, upstream: &str, fault: Fault, triggered: &AtomicUsize) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if request_line.is_empty() {
            request_line = line.clone();
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if let Some(value) = lower.strip_prefix("content-length:") {
            content_length = value.trim().parse().unwrap_or(0);
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    server.write_all(&head).unwrap_or(());

    let Fault::ResetUploadAfter { bytes, times } = fault;
    let cut = method == "PUT"
        && path.contains("/blobs/uploads/")
        && content_length > bytes
        && triggered.load(Ordering::SeqCst) < times;
    let limit = if cut { bytes } else { content_length };
    let mut body = (&mut reader).take(limit as u64);
    if std::io::copy(&mut body, &mut server).is_err() {
        return;
    }
    if cut {
        triggered.fetch_add(1, Ordering::SeqCst);
        let _ = server.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    // The registry closes after answering (we asked), so copy until EOF;
    // its `Connection: close` tells the client to stop reusing us too.
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Write);
}
