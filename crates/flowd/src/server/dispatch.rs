//! Commands as agent operations.

use super::*;

impl Session {
    pub(super) async fn execute(
        &mut self,
        command: Command,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Response, End> {
        let p = self.principal().clone();
        let agent = self.agent().clone();
        let result: Result<Response, AgentError> = match command {
            Command::Quit => {
                send(writer, &Reply::ok("Bye")).await?;
                return Err(End::Quit);
            }
            Command::Noop => Ok(ok("OK")),
            Command::Help(topic) => Ok(help(topic)),
            Command::Capabilities => Ok(self.capabilities()),
            Command::StartTls => {
                if self.tls {
                    return Ok(Response::One(Reply::new(
                        Code::Sequence,
                        "TLS is already on",
                    )));
                }
                if self.shared.acceptor.is_none() {
                    return Ok(Response::One(Reply::new(
                        Code::TlsUnavailable,
                        "TLS is not configured on this host",
                    )));
                }
                send(writer, &Reply::ok("Ready to start TLS")).await?;
                return Err(End::StartTls);
            }
            Command::Authenticate { mechanism, initial } => {
                return self.authenticate(mechanism, initial, reader, writer).await;
            }
            Command::CreateNamespace {
                namespace,
                owner,
                public,
            } => agent
                .create_namespace_as(&p, &namespace, owner, public)
                .await
                .map(|r| ok(format!("OK {}", r.name))),
            Command::DescribeNamespace(ns) => {
                agent
                    .describe_namespace_as(&p, &ns)
                    .await
                    .map(|(record, flows, children)| {
                        let mut lines = vec![
                            format!("namespace={}", record.name),
                            format!("owner={}", record.owner.as_deref().unwrap_or("(host)")),
                            format!("public={}", record.public),
                            format!("created={}", record.created),
                        ];
                        lines.extend(record.grants.iter().map(|(u, r)| format!("grant={u}:{r}")));
                        lines.extend(flows.iter().map(|f| format!("flow={f}")));
                        lines.extend(children.iter().map(|c| format!("namespace-child={c}")));
                        Response::Data(lines, Reply::ok("OK"))
                    })
            }
            Command::DeleteNamespace(ns) => agent
                .delete_namespace_as(&p, &ns)
                .await
                .map(|()| ok(format!("OK {ns}"))),
            Command::ListNamespaces(parent) => agent
                .list_namespaces_as(&p, parent.as_ref())
                .await
                .map(|records| {
                    let lines = records.iter().map(|r| r.name.to_string()).collect();
                    Response::Data(lines, Reply::ok("OK"))
                }),
            Command::Grant {
                user,
                right,
                namespace,
            } => agent
                .grant_as(&p, &user, Some(right), &namespace)
                .await
                .map(|_| ok(format!("OK {user} {right} {namespace}"))),
            Command::Revoke { user, namespace } => agent
                .grant_as(&p, &user, None, &namespace)
                .await
                .map(|_| ok(format!("OK {user} {namespace}"))),
            Command::CreateFlow { flow, options } => agent
                .create_flow_as(&p, &flow, &options)
                .await
                .map(|info| ok(format!("OK {}", info.name))),
            Command::DescribeFlow(flow) => {
                let urls = self.shared.ctx.broker_urls.join(",");
                match agent.describe_flow_as(&p, &flow).await {
                    Ok(info) => {
                        let namespace = agent
                            .flow_right(&p, &flow)
                            .await
                            .ok()
                            .and_then(|(_, ns)| ns);
                        Ok(Response::Data(
                            describe_flow(&info, namespace, &urls),
                            Reply::ok("OK"),
                        ))
                    }
                    Err(e) => Err(e),
                }
            }
            Command::UpdateFlow { flow, options } => agent
                .update_flow_as(&p, &flow, &options)
                .await
                .map(|info| ok(format!("OK {}", info.name))),
            Command::DeleteFlow(flow) => agent
                .delete_flow_as(&p, &flow)
                .await
                .map(|()| ok(format!("OK {flow}"))),
            Command::ListFlows(namespace) => {
                agent
                    .list_flows_as(&p, namespace.as_ref())
                    .await
                    .map(|flows| {
                        let lines = flows.iter().map(|f| f.name.to_string()).collect();
                        Response::Data(lines, Reply::ok("OK"))
                    })
            }
            Command::ReadFlow {
                flow,
                start,
                count,
                follow,
                sequences,
            } => {
                let options = ReadOptions {
                    start,
                    count,
                    follow,
                    sequences,
                };
                return self.read_flow(&p, flow, options, reader, writer).await;
            }
            Command::WriteFlow(flow) => return self.write_flow(&p, flow, reader, writer).await,
            Command::Subscribe { remote, local } => agent
                .subscribe_as(
                    &p,
                    &remote,
                    local.as_ref(),
                    self.tls || self.plain_trusted(),
                )
                .await
                .map(|subscribed| Response::Data(subscribed.lines(), Reply::ok("OK"))),
            Command::Unsubscribe(copy) => agent
                .unsubscribe_as(&p, &copy)
                .await
                .map(|()| ok(format!("OK {copy}"))),
            Command::ListSubscriptions => agent.list_subscriptions_as(&p).await.map(|subs| {
                let lines = subs
                    .iter()
                    .map(|s| {
                        let bridge = match (&s.agent, &s.broker) {
                            (Some(agent), None) => format!("remote:{agent}"),
                            (Some(agent), Some(_)) => format!("remote+nats:{agent}"),
                            (None, _) => s.processor.clone(),
                        };
                        let mut line =
                            format!("{} {} {} {bridge} {}", s.local, s.remote, s.copy, s.state());
                        if let Some(reason) = s.revoked_reason.as_deref().filter(|_| s.revoked) {
                            line.push(' ');
                            line.push_str(&reason.replace(['\r', '\n'], " "));
                        }
                        line
                    })
                    .collect();
                Response::Data(lines, Reply::ok("OK"))
            }),
            Command::ListSubscribers(flow) => {
                agent.list_subscribers_as(&p, &flow).await.map(|subs| {
                    let lines = subs
                        .iter()
                        .map(|s| {
                            format!("{} {}", s.copy, s.user.as_deref().unwrap_or("(anonymous)"))
                        })
                        .collect();
                    Response::Data(lines, Reply::ok("OK"))
                })
            }
            Command::RemoveSubscriber(copy) => agent
                .remove_subscriber_as(&p, &copy)
                .await
                .map(|()| ok(format!("OK {copy}"))),
            Command::PauseSubscription(local) => agent
                .pause_subscription_as(&p, &local, true)
                .await
                .map(|_| ok(format!("OK {local} paused"))),
            Command::ResumeSubscription(local) => agent
                .pause_subscription_as(&p, &local, false)
                .await
                .map(|_| ok(format!("OK {local} resumed"))),
            Command::StopSubscription(local) => agent
                .stop_subscription_as(&p, &local)
                .await
                .map(|_| ok(format!("OK {local} stopped"))),
            Command::PutComponent => return self.put_component(&p, reader, writer).await,
            Command::CreateProcessor(id) => {
                let request = match self.processor_request(reader, writer).await? {
                    Ok(request) => request,
                    Err(reply) => return Ok(Response::One(reply)),
                };
                let limits = self.shared.ctx.limits.clone();
                agent
                    .create_processor_as(&p, &id, request, &limits)
                    .await
                    .map(|spec| ok(format!("OK {}", spec.id)))
            }
            Command::UpdateProcessor(id) => {
                let request = match self.processor_request(reader, writer).await? {
                    Ok(request) => request,
                    Err(reply) => return Ok(Response::One(reply)),
                };
                agent
                    .update_processor_as(&p, &id, request)
                    .await
                    .map(|spec| {
                        Response::One(
                            ProcessorUpdated {
                                id: spec.id,
                                generation: spec.generation,
                            }
                            .to_reply(),
                        )
                    })
            }
            Command::DescribeProcessor(id) => {
                agent
                    .describe_processor_as(&p, &id)
                    .await
                    .map(|(spec, status)| {
                        Response::Data(describe_processor(&spec, status.as_ref()), Reply::ok("OK"))
                    })
            }
            Command::ListAgents => agent.list_agents_as(&p).await.map(|agents| {
                let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
                let lines = agents
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {} fnap={} api={} instances={} events={} rate={:.1} beat={}ms",
                            a.id,
                            if a.fqdn.is_empty() { "-" } else { &a.fqdn },
                            a.fnap.as_deref().unwrap_or("-"),
                            a.api.as_deref().unwrap_or("-"),
                            a.instances,
                            a.events_in,
                            a.rate,
                            now.saturating_sub(a.heartbeat_ms),
                        )
                    })
                    .collect();
                Response::Data(lines, Reply::ok("OK"))
            }),
            Command::ListProcessors => agent.list_processors_as(&p).await.map(|all| {
                let lines = all
                    .iter()
                    .map(|(spec, status)| {
                        let phase = if spec.paused {
                            "paused".to_owned()
                        } else {
                            status.as_ref().map_or("pending".to_owned(), |s| {
                                serde_json::to_value(s.phase)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_owned))
                                    .unwrap_or_default()
                            })
                        };
                        format!("{} {} {}", spec.id, spec.kind, phase)
                    })
                    .collect();
                Response::Data(lines, Reply::ok("OK"))
            }),
            Command::PauseProcessor(id) => agent
                .pause_processor_as(&p, &id, true)
                .await
                .map(|_| ok(format!("OK {id} paused"))),
            Command::ResumeProcessor(id) => agent
                .pause_processor_as(&p, &id, false)
                .await
                .map(|_| ok(format!("OK {id} resumed"))),
            Command::DeleteProcessor(id) => agent
                .delete_processor_as(&p, &id)
                .await
                .map(|()| ok(format!("OK {id} deleted"))),
        };
        Ok(result.unwrap_or_else(|e| Response::One(error_reply(&e))))
    }
}
