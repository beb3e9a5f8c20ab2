//! Commands as agent operations.

use super::*;

impl Driver {
    /// Executes a command the state machine dispatched. `NOOP`, `HELP`,
    /// `QUIT`, `STARTTLS` and `AUTHENTICATE` never come here: the state
    /// machine answers them.
    pub(super) async fn dispatch(
        &mut self,
        command: Command,
        conn: &mut Conn,
    ) -> Result<Response, End> {
        let p = self.principal();
        let agent = self.agent().clone();
        let result: Result<Response, AgentError> = match command {
            Command::Quit
            | Command::Noop
            | Command::Help(_)
            | Command::StartTls
            | Command::Authenticate { .. } => Ok(Response::Reply(Reply::new(
                Code::Sequence,
                "not a command for the host",
            ))),
            Command::Capabilities => Ok(self.capabilities()),
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
                        data(lines)
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
                    data(lines)
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
                        Ok(data(describe_flow(&info, namespace, &urls)))
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
                        data(lines)
                    })
            }
            Command::ReadFlow {
                flow,
                start,
                count,
                follow,
                sequences,
            } => {
                let options = data::ReadOptions {
                    start,
                    count,
                    follow,
                    sequences,
                };
                return self.read_flow(&p, flow, options, conn).await;
            }
            Command::WriteFlow(flow) => self.start_upload(&p, flow).await,
            Command::Subscribe { remote, local } => agent
                .subscribe_as(
                    &p,
                    Some(self.peer.ip()),
                    &remote,
                    local.as_ref(),
                    self.session.plain_allowed(),
                )
                .await
                .map(|subscribed| data(subscribed.lines())),
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
                        let reason = match (s.revoked, &s.failing) {
                            (true, _) => s.revoked_reason.as_deref(),
                            (false, Some(why)) => Some(why.as_str()),
                            (false, None) => None,
                        };
                        if let Some(reason) = reason {
                            line.push(' ');
                            line.push_str(&reason.replace(['\r', '\n'], " "));
                        }
                        line
                    })
                    .collect();
                data(lines)
            }),
            Command::ListSubscribers(flow) => {
                agent.list_subscribers_as(&p, &flow).await.map(|subs| {
                    let lines = subs
                        .iter()
                        .map(|s| {
                            format!("{} {}", s.copy, s.user.as_deref().unwrap_or("(anonymous)"))
                        })
                        .collect();
                    data(lines)
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
            // Their blocks are collected by the state machine, then
            // handed to `collected`.
            Command::PutComponent | Command::CreateProcessor(_) | Command::UpdateProcessor(_) => {
                Ok(Response::Collect)
            }
            Command::DescribeProcessor(id) => agent
                .describe_processor_as(&p, &id)
                .await
                .map(|(spec, status)| data(describe_processor(&spec, status.as_ref()))),
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
                data(lines)
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
                        let (events_in, events_out, dead) = status
                            .as_ref()
                            .map_or((0, 0, 0), |s| (s.events_in, s.events_out, s.dead_lettered));
                        format!(
                            "{} {} {phase} {events_in} {events_out} {dead}",
                            spec.id, spec.kind
                        )
                    })
                    .collect();
                data(lines)
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
        Ok(result.unwrap_or_else(|e| Response::Reply(error_reply(&e))))
    }
}
