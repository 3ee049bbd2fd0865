//! A fault-injecting HTTP/1.1 proxy in front of a real registry, scripted
//! per test with [`Rule`]s. One request per upstream connection
//! (`Connection: close`), so a fault hits exactly the requests a rule names.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Response headers to add, given how many requests the rule matched before.
pub type HeaderFn = Arc<dyn Fn(usize) -> Vec<(String, String)> + Send + Sync>;

/// What to do to a request a rule matches.
#[derive(Clone)]
pub enum Action {
    /// Answer with these exact bytes instead of asking the registry (no
    /// body to a HEAD).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Forward only this many bytes of the request body, then cut both sides
    /// (a reset in the middle of an upload).
    CutRequestAfter(usize),
    /// Forward the response, cut after this many bytes of its body (a reset
    /// in the middle of a download).
    CutResponseAfter(usize),
    /// Wait this long before forwarding.
    Delay(Duration),
    /// Flip the first byte of the response body (tampering in transit).
    Corrupt,
    /// Forward, adding these response headers.
    Headers(HeaderFn),
    /// Forward, leaving out this response header (lower case).
    StripHeader(&'static str),
    /// Forward both bodies at this many bytes per second (a slow link).
    Throttle(usize),
    /// Answer 307 to the same path on `host`, with `query` added (a CDN's
    /// signed URL).
    RedirectTo { host: String, query: String },
    /// Forward, making an absolute `Location` relative (`/v2/…`).
    RelativeLocation,
    /// Forward, answering with this status instead of the registry's.
    ReplaceStatus(u16),
    /// A rate limit nobody published: matching requests beyond the
    /// bucket's pace are answered 429 (see [`Bucket`]), the rest forwarded.
    Limit(Arc<Bucket>),
    /// Answer `GET /v2/<name>/referrers/<digest>` as a registry with the
    /// OCI 1.1 referrers API does, from the storage of the distribution 2.8
    /// behind (rooted here), which keeps every manifest but has no API.
    Referrers(std::path::PathBuf),
}

/// A token bucket: `burst` requests at once, refilled at `per_second`. What
/// it refuses is answered `429 Too Many Requests` with a distribution-style
/// `TOOMANYREQUESTS` body, and `Retry-After` only when `retry_after` is set.
/// Limits that are published nowhere and state no wait: quay.io's 429s
/// during Harbor replication (goharbor/harbor#19199, whose reporter asks
/// for the rate to be found by itself) and on tag listing
/// (argoproj-labs/argocd-image-updater#108); ECR's PutImage at 10 a second,
/// where retries in a row only make it worse (containerd/containerd#10447).
pub struct Bucket {
    per_second: f64,
    burst: f64,
    retry_after: Option<u64>,
    state: Mutex<(f64, std::time::Instant)>,
    /// Requests refused so far.
    pub refused: AtomicUsize,
    /// Requests let through so far.
    pub passed: AtomicUsize,
}

impl Bucket {
    pub fn new(per_second: f64, burst: usize, retry_after: Option<u64>) -> Arc<Bucket> {
        Arc::new(Bucket {
            per_second,
            burst: burst as f64,
            retry_after,
            state: Mutex::new((burst as f64, std::time::Instant::now())),
            refused: AtomicUsize::new(0),
            passed: AtomicUsize::new(0),
        })
    }

    /// Takes a token if there is one.
    fn take(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        let now = std::time::Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * self.per_second;
        *state = ((state.0 + refill).min(self.burst), now);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            self.passed.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            self.refused.fetch_add(1, Ordering::SeqCst);
            false
        }
    }

    /// The answer to a request refused.
    fn refusal(&self) -> Action {
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        if let Some(seconds) = self.retry_after {
            headers.push(("Retry-After".to_string(), seconds.to_string()));
        }
        Action::Respond {
            status: 429,
            headers,
            body: br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"rate limit exceeded"}]}"#
                .to_vec(),
        }
    }
}

/// Matches requests by method and a substring of the path, `times` times.
#[derive(Clone)]
pub struct Rule {
    /// `GET`, `HEAD`, `PUT`, …; empty for any.
    pub method: &'static str,
    /// A substring of the path (`/manifests/`, `/blobs/sha256:`); empty for any.
    pub path: String,
    /// How many matching requests get the action (`usize::MAX`: all).
    pub times: usize,
    pub action: Action,
    /// Only requests whose body is larger than this many bytes match.
    pub larger_than: usize,
    /// Only requests whose body holds this text match (bodies up to
    /// [`BUFFERED`] bytes: manifests, not layers).
    pub body_contains: Option<String>,
}

/// Request bodies up to this size are read before rules are matched, when
/// a rule looks into bodies.
const BUFFERED: usize = 4 << 20;

impl Rule {
    pub fn new(method: &'static str, path: &str, times: usize, action: Action) -> Rule {
        Rule {
            method,
            path: path.to_string(),
            times,
            action,
            larger_than: 0,
            body_contains: None,
        }
    }

    /// The rule, for requests whose body holds `text` only.
    pub fn body_contains(mut self, text: &str) -> Rule {
        self.body_contains = Some(text.to_string());
        self
    }

    /// The rule, for requests with more than `bytes` of body only.
    pub fn larger_than(mut self, bytes: usize) -> Rule {
        self.larger_than = bytes;
        self
    }

    /// A cut rule only counts requests with more body than it lets through.
    fn matches(&self, method: &str, path: &str, content_length: usize, body: &[u8]) -> bool {
        let cuttable = match self.action {
            Action::CutRequestAfter(bytes) => content_length > bytes,
            _ => true,
        };
        let holds = |text: &String| body.windows(text.len()).any(|w| w == text.as_bytes());
        (self.method.is_empty() || self.method == method)
            && path.contains(&self.path)
            && cuttable
            && (self.larger_than == 0 || content_length > self.larger_than)
            && self.body_contains.as_ref().is_none_or(holds)
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub at: std::time::Instant,
    /// The request's header lines, as sent (`Range: bytes=…`).
    pub headers: Vec<String>,
}

pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    rules: Arc<Vec<(Rule, AtomicUsize)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// While set, the answer to every request, before any rule.
    everything: Arc<Mutex<Option<Action>>>,
}

impl Proxy {
    pub fn start(upstream: &str, rules: Vec<Rule>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let rules: Arc<Vec<(Rule, AtomicUsize)>> = Arc::new(
            rules
                .into_iter()
                .map(|r| (r, AtomicUsize::new(0)))
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let everything = Arc::new(Mutex::new(None));
        let upstream = upstream.to_string();
        let (shared_rules, shared_seen, shared_everything) =
            (rules.clone(), seen.clone(), everything.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, rules, seen) =
                    (upstream.clone(), shared_rules.clone(), shared_seen.clone());
                let everything = shared_everything.lock().unwrap().clone();
                std::thread::spawn(move || serve(client, &upstream, &rules, &seen, everything));
            }
        });
        Proxy {
            host,
            rules,
            seen,
            everything,
        }
    }

    /// From now on, `action` for every request (a registry that broke),
    /// or with `None` the rules again (it is back).
    pub fn answer_everything(&self, action: Option<Action>) {
        *self.everything.lock().unwrap() = action;
    }

    /// How many requests rule `index` was applied to.
    pub fn applied(&self, index: usize) -> usize {
        self.rules[index]
            .1
            .load(Ordering::SeqCst)
            .min(self.rules[index].0.times)
    }

    /// Every request seen, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The first rule that matches and has uses left, counting the use.
fn pick(
    rules: &[(Rule, AtomicUsize)],
    method: &str,
    path: &str,
    content_length: usize,
    body: &[u8],
) -> Option<(usize, Action, usize)> {
    for (index, (rule, hits)) in rules.iter().enumerate() {
        if rule.matches(method, path, content_length, body) {
            let before = hits.fetch_add(1, Ordering::SeqCst);
            if before < rule.times {
                return Some((index, rule.action.clone(), before));
            }
        }
    }
    None
}

fn serve(
    client: TcpStream,
    upstream: &str,
    rules: &[(Rule, AtomicUsize)],
    seen: &Mutex<Vec<Seen>>,
    everything: Option<Action>,
) {
    let mut head_reader = BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    let Some(request) = super::standin::read_head(&mut head_reader) else {
        return;
    };
    let (method, path) = (request.method.clone(), request.target.clone());
    let content_length = request.content_length();
    // A small body is read first when a rule looks into bodies; it is
    // forwarded from here, then the rest from the connection.
    let mut body = Vec::new();
    if content_length <= BUFFERED && rules.iter().any(|(r, _)| r.body_contains.is_some()) {
        let _ = (&mut head_reader)
            .take(content_length as u64)
            .read_to_end(&mut body);
    }
    let mut reader = std::io::Cursor::new(body.clone()).chain(head_reader);
    // Forwarded as sent, but one request per upstream connection.
    let mut head = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for line in &request.lines {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            head.extend_from_slice(line.as_bytes());
        }
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let picked = match everything {
        Some(action) => Some((usize::MAX, action, 0)),
        None => pick(rules, &method, &path, content_length, &body),
    };
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        at: std::time::Instant::now(),
        headers: request.lines.iter().map(|l| l.trim().to_string()).collect(),
    });
    let action = picked.map(|(_, action, n)| (action, n));
    // A rate limit lets the request through (as if no rule matched) or
    // refuses it.
    let action = match action {
        Some((Action::Limit(bucket), n)) => (!bucket.take()).then(|| (bucket.refusal(), n)),
        other => other,
    };

    if let Some((
        Action::Respond {
            status,
            headers,
            body,
        },
        _,
    )) = &action
    {
        let _ = std::io::copy(
            &mut (&mut reader).take(content_length as u64),
            &mut std::io::sink(),
        );
        let mut answer = format!("HTTP/1.1 {status} Fault\r\nConnection: close\r\n");
        for (name, value) in headers {
            answer.push_str(&format!("{name}: {value}\r\n"));
        }
        answer.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut answer = answer.into_bytes();
        if method != "HEAD" {
            answer.extend_from_slice(body);
        }
        let _ = client.write_all(&answer);
        let _ = client.shutdown(Shutdown::Write);
        return;
    }
    if let Some((Action::RedirectTo { host, query }, _)) = &action {
        let separator = if path.contains('?') { '&' } else { '?' };
        let answer = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nConnection: close\r\nLocation: http://{host}{path}{separator}{query}\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = client.write_all(answer.as_bytes());
        let _ = client.shutdown(Shutdown::Write);
        return;
    }
    if let Some((Action::Referrers(root), _)) = &action {
        let _ = std::io::copy(
            &mut (&mut reader).take(content_length as u64),
            &mut std::io::sink(),
        );
        let body = referrers(root, &path).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes());
        let _ = client.shutdown(Shutdown::Write);
        return;
    }
    if let Some((Action::Delay(wait), _)) = &action {
        std::thread::sleep(*wait);
    }
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    server.write_all(&head).unwrap_or(());

    let cut_request = match &action {
        Some((Action::CutRequestAfter(bytes), _)) => Some(*bytes),
        _ => None,
    };
    let limit = cut_request.unwrap_or(content_length);
    let rate = match &action {
        Some((Action::Throttle(rate), _)) => Some(*rate),
        _ => None,
    };
    if paced_copy(&mut (&mut reader).take(limit as u64), &mut server, rate).is_err() {
        return;
    }
    if cut_request.is_some() {
        let _ = server.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }

    // The response head, then its body until EOF (the registry closes after
    // answering, as asked; its `Connection: close` stops the client reusing us).
    let mut response = BufReader::new(server);
    let mut response_head = Vec::new();
    let mut is_head_request_or_empty = method == "HEAD";
    loop {
        let mut line = Vec::new();
        match response.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == b"\r\n" {
            break;
        }
        if let Some((Action::ReplaceStatus(status), _)) = &action
            && line.starts_with(b"HTTP/1.1 ")
        {
            response_head.extend_from_slice(format!("HTTP/1.1 {status} Replaced\r\n").as_bytes());
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with(b"content-length: 0") {
            is_head_request_or_empty = true;
        }
        if let Some((Action::StripHeader(name), _)) = &action
            && lower.starts_with(format!("{name}:").as_bytes())
        {
            continue;
        }
        if let Some((Action::RelativeLocation, _)) = &action
            && lower.starts_with(b"location: http")
        {
            let text = String::from_utf8_lossy(&line).into_owned();
            let url = text["location: ".len()..].trim();
            let relative = url::Url::parse(url)
                .map(|u| match u.query() {
                    Some(query) => format!("{}?{query}", u.path()),
                    None => u.path().to_string(),
                })
                .unwrap_or_else(|_| url.to_string());
            response_head.extend_from_slice(format!("Location: {relative}\r\n").as_bytes());
            continue;
        }
        response_head.extend_from_slice(&line);
    }
    if let Some((Action::Headers(headers), n)) = &action {
        for (name, value) in headers(*n) {
            response_head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    response_head.extend_from_slice(b"\r\n");
    if client.write_all(&response_head).is_err() {
        return;
    }
    match &action {
        Some((Action::CutResponseAfter(bytes), _)) => {
            let _ = std::io::copy(&mut (&mut response).take(*bytes as u64), &mut client);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        Some((Action::Corrupt, _)) if !is_head_request_or_empty => {
            let mut first = [0u8; 1];
            if response.read_exact(&mut first).is_ok() {
                first[0] ^= 0xff;
                let _ = client.write_all(&first);
            }
        }
        _ => {}
    }
    let _ = paced_copy(&mut response, &mut client, rate);
    let _ = client.shutdown(Shutdown::Write);
}

/// Copies `from` to `to`, at most `rate` bytes per second if given.
fn paced_copy(
    from: &mut impl Read,
    to: &mut impl Write,
    rate: Option<usize>,
) -> std::io::Result<u64> {
    let Some(rate) = rate else {
        return std::io::copy(from, to);
    };
    // Tenths of a second: a slow link moves steadily, never in bursts.
    let mut chunk = vec![0; (rate / 10).max(1)];
    let mut moved = 0;
    loop {
        let n = from.read(&mut chunk)?;
        if n == 0 {
            return Ok(moved);
        }
        to.write_all(&chunk[..n])?;
        moved += n as u64;
        std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
    }
}

/// The referrers list of `path` (`/v2/<name>/referrers/<digest>`): every
/// manifest of the repository, in the registry's storage under `root`,
/// whose `subject` is that digest, described as the OCI 1.1 spec says.
fn referrers(root: &std::path::Path, path: &str) -> serde_json::Value {
    let path = path.split('?').next().unwrap_or_default();
    let (name, subject) = path
        .trim_start_matches("/v2/")
        .split_once("/referrers/")
        .unwrap_or_default();
    let v2 = root.join("docker/registry/v2");
    let revisions = v2
        .join("repositories")
        .join(name)
        .join("_manifests/revisions/sha256");
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(revisions).into_iter().flatten().flatten() {
        let hex = entry.file_name().to_string_lossy().into_owned();
        let data = v2
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data");
        let Ok(bytes) = std::fs::read(data) else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if manifest["subject"]["digest"] != subject {
            continue;
        }
        let mut descriptor = serde_json::json!({
            "mediaType": manifest["mediaType"],
            "digest": format!("sha256:{hex}"),
            "size": bytes.len(),
        });
        let kind = manifest
            .get("artifactType")
            .or(manifest["config"].get("mediaType"));
        if let Some(kind) = kind {
            descriptor["artifactType"] = kind.clone();
        }
        if let Some(annotations) = manifest.get("annotations") {
            descriptor["annotations"] = annotations.clone();
        }
        manifests.push(descriptor);
    }
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
}
