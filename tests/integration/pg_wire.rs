//! A raw protocol-3 client for differential tests: it sends exactly the
//! messages a test script says and turns every answer into one line of a
//! transcript, so the same script run against Postgres directly and through
//! the door can be compared line by line.
//!
//! Lines keep what a driver acts on (message types, command tags, row
//! values, SQLSTATE and message of errors and notices, transaction status,
//! parameter types, reported settings) and drop what legitimately differs
//! (backend pid and secret, error source file/line, notification sender).

#![allow(dead_code)]

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::DirectPg;

pub struct Raw {
    s: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// ParameterStatus values reported at startup, sorted.
    pub startup: Vec<String>,
}

fn cstr(b: &mut &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    *b = b.get(end + 1..).unwrap_or(&[]);
    s
}

/// `E`/`N` fields as "SEVERITY CODE message".
fn fields(mut b: &[u8]) -> String {
    let (mut sev, mut code, mut msg) = (String::new(), String::new(), String::new());
    while let Some((&f, rest)) = b.split_first() {
        if f == 0 {
            break;
        }
        b = rest;
        let v = cstr(&mut b);
        match f {
            b'V' => sev = v,
            b'C' => code = v,
            b'M' => msg = v,
            _ => {}
        }
    }
    format!("{sev} {code} {msg}")
}

/// One backend message as a transcript line (`None`: not compared).
fn line(tag: u8, body: &[u8]) -> Option<String> {
    let mut b = body;
    Some(match tag {
        b'1' => "ParseComplete".into(),
        b'2' => "BindComplete".into(),
        b'3' => "CloseComplete".into(),
        b'n' => "NoData".into(),
        b'I' => "EmptyQuery".into(),
        b's' => "PortalSuspended".into(),
        b'C' => format!("Complete {}", cstr(&mut b)),
        b'Z' => format!("Ready {}", char::from(*body.first().unwrap_or(&b'?'))),
        b'E' => format!("Error {}", fields(body)),
        b'N' => format!("Notice {}", fields(body)),
        b'S' => {
            let k = cstr(&mut b);
            format!("Param {k}={}", cstr(&mut b))
        }
        b'A' => {
            b.advance(4);
            let ch = cstr(&mut b);
            format!("Notify {ch} {}", cstr(&mut b))
        }
        b't' => {
            let n = b.get_i16();
            let oids: Vec<String> = (0..n).map(|_| b.get_u32().to_string()).collect();
            format!("ParamTypes {}", oids.join(","))
        }
        b'T' => {
            let n = b.get_i16();
            let mut cols = Vec::new();
            for _ in 0..n {
                let name = cstr(&mut b);
                b.advance(6);
                let oid = b.get_u32();
                b.advance(8);
                cols.push(format!("{name}:{oid}"));
            }
            format!("Row {}", cols.join(","))
        }
        b'D' => {
            let n = b.get_i16();
            let mut vals = Vec::new();
            for _ in 0..n {
                let len = b.get_i32();
                if len < 0 {
                    vals.push("NULL".to_owned());
                } else {
                    let len = usize::try_from(len).unwrap_or(0);
                    vals.push(String::from_utf8_lossy(&b[..len]).into_owned());
                    b.advance(len);
                }
            }
            format!("Data {}", vals.join("|"))
        }
        b'G' => "CopyIn".into(),
        b'H' => "CopyOut".into(),
        b'd' => format!("CopyData {}", String::from_utf8_lossy(body)),
        b'c' => "CopyDone".into(),
        b'K' => return None,
        other => format!("Other {}", char::from(other)),
    })
}

impl Raw {
    /// Start up and authenticate (SCRAM-SHA-256 or cleartext, as the server asks).
    pub async fn connect(to: &DirectPg, extra: &[(&str, &str)]) -> Result<Raw, String> {
        let s = TcpStream::connect((to.host.as_str(), to.port)).await.map_err(|e| e.to_string())?;
        s.set_nodelay(true).ok();
        let mut raw = Raw { s, rbuf: BytesMut::new(), wbuf: BytesMut::new(), startup: Vec::new() };
        let mut params = vec![("user", to.user.as_str()), ("database", to.db.as_str())];
        params.extend_from_slice(extra);
        frontend::startup_message(params, &mut raw.wbuf).map_err(|e| e.to_string())?;
        raw.flush().await;
        let mut scram = None;
        loop {
            let (tag, body) = raw.read().await.ok_or("closed during login")?;
            let mut b = &body[..];
            match tag {
                b'R' => match b.get_i32() {
                    0 => {}
                    3 => {
                        frontend::password_message(to.password.as_bytes(), &mut raw.wbuf).map_err(|e| e.to_string())?
                    }
                    10 => {
                        let sc = ScramSha256::new(to.password.as_bytes(), ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut raw.wbuf)
                            .map_err(|e| e.to_string())?;
                        scram = Some(sc);
                    }
                    11 => {
                        let sc = scram.as_mut().ok_or("no SCRAM")?;
                        sc.update(b).map_err(|e| e.to_string())?;
                        frontend::sasl_response(sc.message(), &mut raw.wbuf).map_err(|e| e.to_string())?;
                    }
                    12 => scram.as_mut().ok_or("no SCRAM")?.finish(b).map_err(|e| e.to_string())?,
                    n => return Err(format!("auth method {n}")),
                },
                b'S' => raw.startup.extend(line(tag, &body)),
                b'E' => return Err(fields(&body)),
                b'Z' => {
                    raw.startup.sort();
                    return Ok(raw);
                }
                _ => {}
            }
            raw.flush().await;
        }
    }

    async fn flush(&mut self) {
        if !self.wbuf.is_empty() {
            self.s.write_all(&self.wbuf).await.expect("write");
            self.wbuf.clear();
        }
    }

    /// One message, or None at EOF.
    async fn read(&mut self) -> Option<(u8, BytesMut)> {
        loop {
            if self.rbuf.len() >= 5 {
                let len = usize::try_from(i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]))
                    .expect("length");
                if self.rbuf.len() > len {
                    let mut frame = self.rbuf.split_to(len + 1);
                    let tag = frame[0];
                    frame.advance(5);
                    return Some((tag, frame));
                }
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(20), self.s.read_buf(&mut self.rbuf))
                .await
                .expect("an answer within 20 s")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    pub fn query(&mut self, sql: &str) -> &mut Self {
        frontend::query(sql, &mut self.wbuf).expect("query");
        self
    }

    pub fn parse(&mut self, name: &str, sql: &str, types: &[u32]) -> &mut Self {
        frontend::parse(name, sql, types.iter().copied(), &mut self.wbuf).expect("parse");
        self
    }

    /// Bind with text-format parameters and results.
    pub fn bind(&mut self, portal: &str, stmt: &str, values: &[Option<&str>]) -> &mut Self {
        let r = frontend::bind(
            portal,
            stmt,
            std::iter::empty::<i16>(),
            values.iter(),
            |v, buf| match v {
                Some(s) => {
                    buf.put_slice(s.as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            std::iter::empty::<i16>(),
            &mut self.wbuf,
        );
        assert!(r.is_ok(), "bind encodes");
        self
    }

    pub fn describe_statement(&mut self, name: &str) -> &mut Self {
        frontend::describe(b'S', name, &mut self.wbuf).expect("describe");
        self
    }

    pub fn describe_portal(&mut self, name: &str) -> &mut Self {
        frontend::describe(b'P', name, &mut self.wbuf).expect("describe");
        self
    }

    pub fn execute(&mut self, portal: &str, max_rows: i32) -> &mut Self {
        frontend::execute(portal, max_rows, &mut self.wbuf).expect("execute");
        self
    }

    pub fn close_statement(&mut self, name: &str) -> &mut Self {
        frontend::close(b'S', name, &mut self.wbuf).expect("close");
        self
    }

    pub fn sync(&mut self) -> &mut Self {
        frontend::sync(&mut self.wbuf);
        self
    }

    /// Parse, Bind, Execute of the unnamed statement and portal.
    pub fn extended(&mut self, sql: &str, values: &[Option<&str>]) -> &mut Self {
        self.parse("", sql, &[]).bind("", "", values).execute("", 0)
    }

    /// Send what was queued and read the answers up to the `n`th
    /// ReadyForQuery (or EOF, recorded as `Closed`).
    pub async fn answers(&mut self, n: usize) -> Vec<String> {
        self.flush().await;
        let mut out = Vec::new();
        let mut ready = 0;
        while ready < n {
            match self.read().await {
                Some((tag, body)) => {
                    if tag == b'Z' {
                        ready += 1;
                    }
                    out.extend(line(tag, &body));
                }
                None => {
                    out.push("Closed".into());
                    break;
                }
            }
        }
        out
    }

    /// Send and read up to one ReadyForQuery.
    pub async fn run(&mut self) -> Vec<String> {
        self.answers(1).await
    }

    /// Terminate and close.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.wbuf);
        self.flush().await;
    }

    /// Whether the server closed the connection (reads up to `wait`).
    pub async fn closed_within(&mut self, wait: std::time::Duration) -> Vec<String> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let r = tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.rbuf)).await;
            while self.rbuf.len() >= 5 {
                let len = usize::try_from(i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]))
                    .expect("length");
                if self.rbuf.len() <= len {
                    break;
                }
                let mut frame = self.rbuf.split_to(len + 1);
                let tag = frame[0];
                frame.advance(5);
                out.extend(line(tag, &frame));
            }
            match r {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    out.push("Closed".into());
                    return out;
                }
                Ok(Ok(_)) => {}
                Err(_) => return out,
            }
        }
    }
}
