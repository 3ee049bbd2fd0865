//! A stand-in HTTP server for the services that cannot run here (GitHub's
//! API, AWS's API) and for distribution's token issuer: it records every
//! request and answers what the test's handler says. The code under test talks to it with its real client
//! (octocrab, the AWS SDK), pointed here by the base URL those clients take.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: std::time::Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What the handler answers: status, headers, body.
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

pub struct StandIn {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl StandIn {
    /// Serves until the test ends; `handler` gets each request and the base URL.
    pub fn start(handler: impl Fn(&Recorded, &str) -> Reply + Send + Sync + 'static) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, base) = (requests.clone(), url.clone());
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, base, handler) = (seen.clone(), base.clone(), handler.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    // Keep-alive: serve requests until the client closes.
                    while let Some(request) = read_request(&mut reader) {
                        seen.lock().unwrap().push(request.clone());
                        let (status, headers, body) = handler(&request, &base);
                        let mut head =
                            format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                        for (name, value) in headers {
                            head.push_str(&format!("{name}: {value}\r\n"));
                        }
                        head.push_str("\r\n");
                        if writer.write_all(head.as_bytes()).is_err()
                            || writer.write_all(&body).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        StandIn { url, requests }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// A request's head as read off the wire: its request line's method and
/// target, its header lines as sent, and the headers by lower-case name.
pub struct Head {
    pub method: String,
    pub target: String,
    /// Each header line as sent, with its line end.
    pub lines: Vec<String>,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The `Content-Length`, or 0.
    pub fn content_length(&self) -> usize {
        self.headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads one request head (the one HTTP/1.1 request reader of the tests:
/// the stand-in server and the fault proxy both use it); `None` at the end
/// of the connection.
pub fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (mut lines, mut headers) = (Vec::new(), Vec::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        lines.push(line);
    }
    Some(Head {
        method,
        target,
        lines,
        headers,
    })
}

fn read_request(reader: &mut impl BufRead) -> Option<Recorded> {
    let head = read_head(reader)?;
    let mut body = vec![0; head.content_length()];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        method: head.method,
        target: head.target,
        headers: head.headers,
        body,
        at: std::time::Instant::now(),
    })
}
