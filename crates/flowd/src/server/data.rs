//! Commands that stream data blocks.

use super::*;

impl Session {
    /// Reads a client data block up to its `.` line: its lines, unstuffed,
    /// or why it was refused (over `budget` bytes in all, a line too long,
    /// not text); the whole block is read either way.
    pub(super) async fn block(
        &mut self,
        reader: &mut Reader,
        budget: usize,
    ) -> Result<Result<Vec<String>, Reply>, End> {
        let mut failed = None;
        let mut lines = Vec::new();
        let mut used = 0usize;
        loop {
            match self.line(reader).await? {
                Line::Closed => return Err(End::Closed),
                Line::Text(t) if framing::is_end(&t) => break,
                Line::Text(t) => {
                    used += t.len();
                    if used > budget {
                        lines.clear();
                        failed.get_or_insert_with(|| {
                            Reply::new(Code::TooLarge, "data block too large")
                        });
                    } else if failed.is_none() {
                        lines.push(framing::unstuff(&t).to_owned());
                    }
                }
                Line::TooLong => {
                    failed.get_or_insert_with(|| Reply::new(Code::TooLarge, "data line too long"));
                }
                Line::NotText => {
                    failed.get_or_insert_with(|| {
                        Reply::new(Code::Syntax, "data line is not UTF-8 text")
                    });
                }
            }
        }
        Ok(failed.map_or(Ok(lines), Err))
    }

    /// Reads the `key=value` block of `CREATE`/`UPDATE PROCESSOR`.
    pub(super) async fn processor_request(
        &mut self,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Result<ProcessorRequest, Reply>, End> {
        send(
            writer,
            &Reply::ok("OK send key=value lines, end with \".\""),
        )
        .await?;
        let lines = match self.block(reader, 1 << 20).await? {
            Ok(lines) => lines,
            Err(reply) => return Ok(Err(reply)),
        };
        Ok(key_values(&lines).and_then(|pairs| {
            ProcessorRequest::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| error_reply(&e))
        }))
    }

    pub(super) async fn put_component(
        &mut self,
        p: &Principal,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        send(
            writer,
            &Reply::ok("OK send the component in base64, end with \".\""),
        )
        .await?;
        let budget = self.config().max_component_bytes / 3 * 4 + 8;
        let lines = match self.block(reader, budget).await? {
            Ok(lines) => lines,
            Err(reply) => return Ok(Response::One(reply)),
        };
        let text: String = lines.iter().map(|l| l.trim()).collect();
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) else {
            return Ok(Response::One(Reply::new(
                Code::Arguments,
                "not valid base64",
            )));
        };
        Ok(match self.agent().put_component_as(p, &bytes).await {
            Ok(digest) => ok(format!("OK {digest}")),
            Err(e) => Response::One(error_reply(&e)),
        })
    }

    pub(super) async fn write_flow(
        &mut self,
        p: &Principal,
        flow: flowd_broker::FlowName,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        let agent = self.agent().clone();
        if let Err(e) = agent.check_write(p, &flow).await {
            return Ok(Response::One(error_reply(&e)));
        }
        send(
            writer,
            &Reply::ok("OK send events as JSON lines, end with \".\""),
        )
        .await?;
        let wrap = jsonl::Wrap::default();
        let mut pending = Vec::new();
        let mut pending_bytes = 0usize;
        let (mut stored, mut duplicates, mut number) = (0u64, 0u64, 0usize);
        let mut failed: Option<Reply> = None;
        loop {
            let line = match self.line(reader).await? {
                Line::Closed => return Err(End::Closed),
                Line::Text(t) if framing::is_end(&t) => break,
                Line::Text(t) => t,
                Line::TooLong => {
                    number += 1;
                    failed.get_or_insert_with(|| {
                        Reply::new(Code::TooLarge, format!("line {number}: event too large"))
                    });
                    continue;
                }
                Line::NotText => {
                    number += 1;
                    failed.get_or_insert_with(|| {
                        Reply::new(Code::Syntax, format!("line {number}: not UTF-8 text"))
                    });
                    continue;
                }
            };
            number += 1;
            if failed.is_some() {
                continue;
            }
            let text = framing::unstuff(&line);
            if text.trim().is_empty() {
                continue;
            }
            match jsonl::parse_line(text, number, &wrap) {
                Ok(event) => {
                    pending_bytes += text.len();
                    pending.push(event);
                }
                Err(e) => {
                    failed = Some(Reply::new(Code::Arguments, e.to_string()));
                    continue;
                }
            }
            // Stored in batches of at most 256 events or 4 MiB, so a
            // session's memory stays bounded whatever the client sends.
            if pending.len() >= 256 || pending_bytes >= 4 << 20 {
                pending_bytes = 0;
                match agent.write(&flow, &pending).await {
                    Ok(published) => {
                        stored += published.stored;
                        duplicates += published.duplicates;
                        pending.clear();
                    }
                    Err(e) => failed = Some(error_reply(&AgentError::from(e))),
                }
            }
        }
        if failed.is_none() && !pending.is_empty() {
            match agent.write(&flow, &pending).await {
                Ok(published) => {
                    stored += published.stored;
                    duplicates += published.duplicates;
                }
                Err(e) => failed = Some(error_reply(&AgentError::from(e))),
            }
        }
        Ok(Response::One(match failed {
            None => Written { stored, duplicates }.to_reply(),
            Some(reply) => WriteFailed::new(&reply, stored).to_reply(),
        }))
    }

    pub(super) async fn read_flow(
        &mut self,
        p: &Principal,
        flow: flowd_broker::FlowName,
        options: ReadOptions,
        reader: &mut Reader,
        writer: &mut Writer,
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
            Err(e) => return Ok(Response::One(error_reply(&e))),
        };
        let first = match start {
            Start::First => Some(1),
            Start::New => None,
            Start::Sequence(n) => Some(n.max(1)),
        };
        let mut events = match agent.reader(&flow, first).await {
            Ok(r) => r,
            Err(e) => return Ok(Response::One(error_reply(&e))),
        };
        write_line(writer, "220 DATA").await?;
        writer.flush().await?;
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
                ready = reader.fill_buf() => {
                    let _ = ready?;
                    stopped = true;
                    break;
                }
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    // The data block ends with the error reply.
                    send(writer, &error_reply(&e)).await?;
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
                write_line(writer, &framing::stuff(&line)).await?;
                sent += 1;
                if !follow && sequence >= last {
                    reached_end = true;
                }
            }
            writer.flush().await?;
            if reached_end {
                break;
            }
        }
        if stopped {
            // Consume the line that stopped the read.
            let _ = self.line(reader).await?;
        }
        send(writer, &Reply::ok(format!("OK {sent} events"))).await?;
        Ok(Response::Sent { success: true })
    }
}
