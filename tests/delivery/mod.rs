//! Helpers shared by the delivery end-to-end tests (tests/delivery_*.rs): a scriptable SMTP
//! peer on loopback, queue listing through `postqueue -p`, Maildir reading, message
//! submission over SMTP (the DNS zone helper is in tests/common).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::*;

/// One message a peer accepted (250 after the final dot).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: String,
}

/// How a peer answers; changeable while it runs.
#[derive(Debug, Clone)]
pub struct Script {
    /// The greeting; a non-2xx greeting is followed by closing the connection.
    pub greeting: String,
    /// RCPT replies by (lower-case) address; others get 250.
    pub rcpt: HashMap<String, String>,
    /// The reply to the final dot.
    pub data: String,
    /// A pause before that reply (a slow peer).
    pub data_delay: Duration,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 peer.test ESMTP".into(),
            rcpt: HashMap::new(),
            data: "250 2.0.0 Ok: queued".into(),
            data_delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
pub struct PeerState {
    pub script: Script,
    pub connections: usize,
    pub accepted: Vec<Accepted>,
    /// Open sessions, shut down when the peer stops (so a cached connection dies too).
    open: Vec<TcpStream>,
}

/// An SMTP server on `ip:port` run by threads; stops (and frees the port) when dropped.
pub struct Peer {
    pub port: u16,
    pub state: Arc<Mutex<PeerState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    pub fn start(ip: &str, port: u16, script: Script) -> Peer {
        Self::start_with(
            ip,
            port,
            Arc::new(Mutex::new(PeerState {
                script,
                ..Default::default()
            })),
        )
    }

    /// Starts a peer sharing `state` with an earlier (stopped) one, so counts carry over.
    pub fn start_with(ip: &str, port: u16, state: Arc<Mutex<PeerState>>) -> Peer {
        let l = TcpListener::bind((ip, port)).expect("bind peer");
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the test that owns the peer ends within minutes.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !sp.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let st = st.clone();
                        std::thread::spawn(move || serve(s, st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Peer {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set<F: FnOnce(&mut Script)>(&self, f: F) {
        f(&mut self.state.lock().unwrap().script)
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Waits (bounded) until at least `n` messages were accepted.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<Accepted> {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.accepted();
            if a.len() >= n || Instant::now() > deadline {
                return a;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops accepting connections and frees the port.
    pub fn stop(mut self) -> Arc<Mutex<PeerState>> {
        self.halt();
        self.state.clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.state.lock().unwrap().open.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve(s: TcpStream, st: Arc<Mutex<PeerState>>) {
    let keep = s.try_clone();
    serve_session(s, st);
    // The peer keeps a clone of every socket (to cut them when it stops): close explicitly.
    if let Ok(k) = keep {
        let _ = k.shutdown(std::net::Shutdown::Both);
    }
}

fn serve_session(s: TcpStream, st: Arc<Mutex<PeerState>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(rs) = s.try_clone() else { return };
    let mut r = BufReader::new(rs);
    let mut w = s;
    let script = {
        let mut g = st.lock().unwrap();
        g.connections += 1;
        if let Ok(c) = w.try_clone() {
            g.open.push(c);
        }
        g.script.clone()
    };
    if w.write_all(format!("{}\r\n", script.greeting).as_bytes())
        .is_err()
        || !script.greeting.starts_with('2')
    {
        return;
    }
    let mut from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    // Bounded: a session of the tests never has this many commands.
    for _ in 0..100_000 {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        let cmd = line.trim_end();
        let upper = cmd.to_ascii_uppercase();
        let rep: String = if upper.starts_with("EHLO") {
            "250-peer.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000".into()
        } else if upper.starts_with("HELO") {
            "250 peer.test".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = addr_of(&cmd[10..]);
            rcpts.clear();
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let a = addr_of(&cmd[8..]);
            let script = st.lock().unwrap().script.clone();
            match script.rcpt.get(&a.to_ascii_lowercase()) {
                Some(rep) => rep.clone(),
                None => {
                    rcpts.push(a);
                    "250 2.1.5 Ok".into()
                }
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 Error: no valid recipients".into()
            } else {
                if w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .is_err()
                {
                    return;
                }
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    match r.read_line(&mut l) {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                    data.push_str(&l);
                }
                let pause = st.lock().unwrap().script.data_delay;
                std::thread::sleep(pause);
                let mut g = st.lock().unwrap();
                let rep = g.script.data.clone();
                if rep.starts_with('2') {
                    g.accepted.push(Accepted {
                        from: from.clone(),
                        rcpts: std::mem::take(&mut rcpts),
                        data,
                    });
                }
                rep
            }
        } else if upper == "RSET" {
            rcpts.clear();
            "250 2.0.0 Ok".into()
        } else if upper == "QUIT" {
            let _ = w.write_all(b"221 2.0.0 Bye\r\n");
            return;
        } else {
            "250 2.0.0 Ok".into()
        };
        if w.write_all(format!("{rep}\r\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn addr_of(arg: &str) -> String {
    let a = arg.trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_string()
}

/// Sends one message over SMTP to relais; `rcpts` may carry ESMTP parameters after the
/// address (e.g. `x@y NOTIFY=SUCCESS`). Panics with the dialogue on any refusal.
pub fn submit(port: u16, from: &str, rcpts: &[&str], subject: &str, body: &str) {
    let mut c = Smtp::connect(port);
    let g = c.reply();
    assert!(g.starts_with("220"), "{g}");
    let r = c.cmd("EHLO client.test");
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "{r}");
    for rc in rcpts {
        let (a, params) = rc.split_once(' ').unwrap_or((rc, ""));
        let r = c.cmd(format!("RCPT TO:<{a}> {params}").trim_end());
        assert!(r.starts_with("250"), "RCPT {rc}: {r}");
    }
    let r = c.cmd("DATA");
    assert!(r.starts_with("354"), "{r}");
    let to = rcpts
        .iter()
        .map(|r| r.split(' ').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(", ");
    let r = c.cmd(&format!(
        "From: <{from}>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{body}\r\n."
    ));
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
}

/// Queue IDs `postqueue -p` lists, with the status mark (`*` active, `!` held, ` ` deferred).
pub fn queue_ids(inst: &Instance) -> Vec<(String, char)> {
    let out = inst.tool("postqueue", &["-p"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .filter(|l| {
            l.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && !l.starts_with("Mail queue")
        })
        .filter_map(|l| {
            let tok = l.split_whitespace().next()?;
            let mark = tok.chars().last()?;
            if mark == '*' || mark == '!' {
                Some((tok[..tok.len() - 1].to_string(), mark))
            } else {
                Some((tok.to_string(), ' '))
            }
        })
        .collect()
}

pub fn postqueue_p(inst: &Instance) -> String {
    String::from_utf8_lossy(&inst.tool("postqueue", &["-p"]).stdout).to_string()
}

/// Waits (bounded) until `postqueue -p` says the queue is empty.
pub fn wait_queue_empty(inst: &Instance, timeout: Duration) -> bool {
    wait_until(timeout, || postqueue_p(inst) == "Mail queue is empty\n")
}

/// Files in `mailboxes/localhost/<user>/new` of the instance.
pub fn maildir(inst: &Instance, user: &str) -> Vec<PathBuf> {
    let dir = inst
        .queue()
        .join("mailboxes/localhost")
        .join(user)
        .join("new");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (bounded) for at least `n` messages in a local user's Maildir; returns their texts.
pub fn wait_maildir(inst: &Instance, user: &str, n: usize, timeout: Duration) -> Vec<String> {
    wait_until(timeout, || maildir(inst, user).len() >= n);
    maildir(inst, user)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// The message/delivery-status part of a notice, parsed with mail-parser; panics if the
/// notice is not a multipart/report.
pub fn delivery_status(text: &str) -> String {
    use mail_parser::MimeHeaders;
    let msg = mail_parser::MessageParser::default()
        .parse(text.as_bytes())
        .expect("notice parses");
    let ct = msg
        .root_part()
        .content_type()
        .expect("notice has a Content-Type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"), "{text}");
    assert_eq!(
        ct.attribute("report-type"),
        Some("delivery-status"),
        "{text}"
    );
    for part in msg.parts.iter() {
        if let Some(pct) = part.content_type() {
            if pct.ctype() == "message" && pct.subtype() == Some("delivery-status") {
                return String::from_utf8_lossy(part.contents()).to_string();
            }
        }
    }
    panic!("no message/delivery-status part in\n{text}");
}

/// Counts `needle` in the log.
pub fn log_count(inst: &Instance, needle: &str) -> usize {
    inst.log().matches(needle).count()
}
