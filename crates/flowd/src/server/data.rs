//! The commands with data blocks: `WRITE FLOW` streamed into the broker,
//! `READ FLOW` streamed to the client, and the blocks the state machine
//! collects whole (`PUT COMPONENT`, `CREATE` / `UPDATE PROCESSOR`).

use super::*;

/// How `READ FLOW` reads.
pub(super) struct ReadOptions {
    pub(super) start: Start,
    pub(super) count: Option<u64>,
    pub(super) follow: bool,
    pub(super) sequences: bool,
}

/// Events of a `WRITE FLOW` block are stored in batches of at most this
/// many events or [`UPLOAD_BATCH_BYTES`], so a session's memory stays
/// bounded whatever the client sends.
const UPLOAD_BATCH: usize = 256;
const UPLOAD_BATCH_BYTES: usize = 4 << 20;

/// A `WRITE FLOW` block streaming in.
pub(super) struct Upload {
    flow: flowd_broker::FlowName,
    wrap: jsonl::Wrap,
    pending: Vec<flowd_core::event::Event>,
    pending_bytes: usize,
    stored: u64,
    duplicates: u64,
    /// The first failure; the rest of the block is read and dropped.
    failed: Option<Reply>,
}

impl Driver {
    /// `WRITE FLOW`: the right is checked before the go-ahead.
    pub(super) async fn start_upload(
        &mut self,
        p: &Principal,
        flow: flowd_broker::FlowName,
    ) -> Result<Response, AgentError> {
        self.agent().check_write(p, &flow).await?;
        self.upload = Some(Upload {
            flow,
            wrap: jsonl::Wrap::default(),
            pending: Vec::new(),
            pending_bytes: 0,
            stored: 0,
            duplicates: 0,
            failed: None,
        });
        Ok(Response::Stream)
    }

    /// One line of the `WRITE FLOW` block.
    pub(super) async fn upload_line(&mut self, number: usize, line: DataLine) {
        let agent = self.agent().clone();
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        if upload.failed.is_some() {
            return;
        }
        let text = match line {
            DataLine::TooLong => {
                upload.failed = Some(Reply::new(
                    Code::TooLarge,
                    format!("line {number}: event too large"),
                ));
                return;
            }
            DataLine::NotText => {
                upload.failed = Some(Reply::new(
                    Code::Syntax,
                    format!("line {number}: not UTF-8 text"),
                ));
                return;
            }
            DataLine::Text(text) => text,
        };
        if text.trim().is_empty() {
            return;
        }
        match jsonl::parse_line(&text, number, &upload.wrap) {
            Ok(event) => {
                upload.pending_bytes += text.len();
                upload.pending.push(event);
            }
            Err(e) => {
                upload.failed = Some(Reply::new(Code::Arguments, e.to_string()));
                return;
            }
        }
        if upload.pending.len() >= UPLOAD_BATCH || upload.pending_bytes >= UPLOAD_BATCH_BYTES {
            upload.store(&agent).await;
        }
    }

    /// The `.` of the `WRITE FLOW` block: the rest is stored, and the
    /// reply counts what was.
    pub(super) async fn upload_end(&mut self) -> Response {
        let agent = self.agent().clone();
        let Some(mut upload) = self.upload.take() else {
            return Response::Reply(Reply::new(Code::Sequence, "no WRITE FLOW in progress"));
        };
        if upload.failed.is_none() {
            upload.store(&agent).await;
        }
        Response::Reply(match upload.failed {
            None => Written {
                stored: upload.stored,
                duplicates: upload.duplicates,
            }
            .to_reply(),
            Some(reply) => WriteFailed::new(&reply, upload.stored).to_reply(),
        })
    }

    /// A block the state machine collected whole.
    pub(super) async fn collected(&mut self, command: Command, lines: Vec<String>) -> Response {
        let p = self.principal();
        let agent = self.agent().clone();
        let result = match command {
            Command::PutComponent => {
                let text: String = lines.iter().map(|l| l.trim()).collect();
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.as_bytes())
                else {
                    return Response::Reply(Reply::new(Code::Arguments, "not valid base64"));
                };
                agent
                    .put_component_as(&p, &bytes)
                    .await
                    .map(|digest| ok(format!("OK {digest}")))
            }
            Command::CreateProcessor(id) => {
                let request = match processor_request(&lines) {
                    Ok(request) => request,
                    Err(reply) => return Response::Reply(reply),
                };
                let limits = self.shared.ctx.limits.clone();
                agent
                    .create_processor_as(&p, &id, request, &limits)
                    .await
                    .map(|spec| ok(format!("OK {}", spec.id)))
            }
            Command::UpdateProcessor(id) => {
                let request = match processor_request(&lines) {
                    Ok(request) => request,
                    Err(reply) => return Response::Reply(reply),
                };
                agent
                    .update_processor_as(&p, &id, request)
                    .await
                    .map(|spec| {
                        Response::Reply(
                            ProcessorUpdated {
                                id: spec.id,
                                generation: spec.generation,
                            }
                            .to_reply(),
                        )
                    })
            }
            other => {
                return Response::Reply(Reply::new(
                    Code::Sequence,
                    format!("{other} has no data block"),
                ));
            }
        };
        result.unwrap_or_else(|e| Response::Reply(error_reply(&e)))
    }

    /// `READ FLOW`: the block is streamed as events come; any line from the
    /// client stops it.
    pub(super) async fn read_flow(
        &mut self,
        p: &Principal,
        flow: flowd_broker::FlowName,
        options: ReadOptions,
        conn: &mut Conn,
    ) -> Result<Response, End> {
        let ReadOptions {
            start,
            count,
            follow,
            sequences,
        } = options;
        let agent = self.agent().clone();
        let info = match agent.check_read(p, &flow).await {
            Ok(info) => info,
            Err(e) => return Ok(Response::Reply(error_reply(&e))),
        };
        let first = match start {
            Start::First => Some(1),
            Start::New => None,
            Start::Sequence(n) => Some(n.max(1)),
        };
        // Nothing to read costs no consumer.
        let nothing = count == Some(0) || (!follow && first.is_none_or(|f| f > info.last_sequence));
        if nothing {
            conn.send_line("220 DATA").await?;
            conn.send_line(&Reply::ok("OK 0 events").to_string())
                .await?;
            return Ok(Response::Sent { success: true });
        }
        let mut events = match agent.reader(&flow, first).await {
            Ok(r) => r,
            Err(e) => return Ok(Response::Reply(error_reply(&e))),
        };
        conn.send_line("220 DATA").await?;
        conn.flush().await?;
        // Without FOLLOW, the read ends at what is stored now.
        let last = info.last_sequence;
        let mut sent = 0u64;
        let mut stopped = false;
        let limit = count.unwrap_or(u64::MAX);
        while sent < limit {
            if !follow && (first.is_none() || first.is_some_and(|f| f > last)) {
                break;
            }
            let want = (limit - sent).min(256) as usize;
            let wait = Duration::from_millis(if follow { 500 } else { 200 });
            let batch = tokio::select! {
                batch = events.next(want, wait) => batch,
                // Any line from the client stops the read.
                ready = conn.readable() => {
                    ready?;
                    stopped = true;
                    break;
                }
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    // The data block ends with the error reply.
                    conn.send_line(&error_reply(&e).to_string()).await?;
                    return Ok(Response::Sent { success: false });
                }
            };
            if batch.is_empty() && !follow {
                // Nothing left of what was stored (expired or deleted).
                break;
            }
            let mut reached_end = false;
            for (sequence, event) in batch {
                if !follow && sequence > last {
                    reached_end = true;
                    break;
                }
                let line = if sequences {
                    format!("{sequence} {}", jsonl::to_line(&event))
                } else {
                    jsonl::to_line(&event)
                };
                conn.send_line(&framing::stuff(&line)).await?;
                sent += 1;
                if !follow && sequence >= last {
                    reached_end = true;
                }
            }
            conn.flush().await?;
            if reached_end {
                break;
            }
        }
        if stopped {
            // Consume the line that stopped the read.
            let _ = conn.next_line().await?;
        }
        conn.send_line(&Reply::ok(format!("OK {sent} events")).to_string())
            .await?;
        Ok(Response::Sent { success: true })
    }
}

impl Upload {
    /// Stores the pending events.
    async fn store(&mut self, agent: &Agent) {
        if self.pending.is_empty() {
            return;
        }
        self.pending_bytes = 0;
        match agent.write(&self.flow, &self.pending).await {
            Ok(published) => {
                self.stored += published.stored;
                self.duplicates += published.duplicates;
                self.pending.clear();
            }
            Err(e) => self.failed = Some(error_reply(&AgentError::from(e))),
        }
    }
}

/// The `key=value` block of `CREATE` / `UPDATE PROCESSOR`.
fn processor_request(lines: &[String]) -> Result<ProcessorRequest, Reply> {
    let pairs =
        KeyValues::decode_request(lines).map_err(|e| Reply::new(Code::Arguments, e.to_string()))?;
    ProcessorRequest::from_pairs(&pairs).map_err(|e| error_reply(&e))
}
