//! What the host publishes in DNS (section 4.1.2 of the draft), as plain
//! data: for each flow
//!
//! ```text
//! <flow>                    PTR  _flow._tcp.<flow>
//! _flow._tcp.<flow>         SRV  10 10 <fnap-port> <fnaa-host>
//! _flow._tcp.<flow>         TXT  "tls"                      (when TLS is offered)
//! _queue._flow._tcp.<flow>  SRV  10 10 <broker-port> <broker-host>
//! _queue._flow._tcp.<flow>  TXT  "broker-type=nats"
//! ```
//!
//! and for each namespace zone its SOA and NS, `_fnaa._tcp.<namespace> SRV`
//! (the agent of the namespace), and the agent's and broker's A/AAAA when
//! their names lie inside the zone.

use flowd_core::FlowName;
use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};
use std::net::IpAddr;
use std::str::FromStr;

/// Where this host can be reached, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The FNAA's host name (the SRV target).
    pub fnaa_host: String,
    /// The FNAP port (the flows' SRV port).
    pub fnap_port: u16,
    /// Whether the FNAA offers TLS (STARTTLS or implicit).
    pub tls: bool,
    /// Addresses of the FNAA host (A/AAAA).
    pub addresses: Vec<IpAddr>,
    /// The broker's host name (the `_queue` SRV target).
    pub broker_host: String,
    /// The broker's client port (the `_queue` SRV port).
    pub broker_port: u16,
    /// Time to live of every record, in seconds.
    pub ttl: u32,
}

/// Why a name cannot be published.
#[derive(Debug, thiserror::Error)]
#[error("`{name}` is not a DNS name: {reason}")]
pub struct RecordError {
    /// The name given.
    pub name: String,
    /// Why it is not one.
    pub reason: String,
}

/// An absolute DNS name.
pub fn fqdn(name: &str) -> Result<Name, RecordError> {
    let text = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    Name::from_str(&text).map_err(|e| RecordError {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// `_flow._tcp.<flow>`.
pub fn service_name(flow: &FlowName) -> Result<Name, RecordError> {
    fqdn(&format!("_flow._tcp.{flow}"))
}

/// `_queue._flow._tcp.<flow>`.
pub fn queue_name(flow: &FlowName) -> Result<Name, RecordError> {
    fqdn(&format!("_queue._flow._tcp.{flow}"))
}

/// `_fnaa._tcp.<namespace>`.
pub fn agent_name(namespace: &str) -> Result<Name, RecordError> {
    fqdn(&format!("_fnaa._tcp.{namespace}"))
}

/// The records of one flow.
pub fn flow_records(flow: &FlowName, p: &Publication) -> Result<Vec<Record>, RecordError> {
    let owner = fqdn(flow.as_str())?;
    let service = service_name(flow)?;
    let queue = queue_name(flow)?;
    let mut records = vec![
        Record::from_rdata(owner, p.ttl, RData::PTR(PTR(service.clone()))),
        Record::from_rdata(
            service.clone(),
            p.ttl,
            RData::SRV(SRV::new(10, 10, p.fnap_port, fqdn(&p.fnaa_host)?)),
        ),
        Record::from_rdata(
            queue.clone(),
            p.ttl,
            RData::SRV(SRV::new(10, 10, p.broker_port, fqdn(&p.broker_host)?)),
        ),
        Record::from_rdata(
            queue,
            p.ttl,
            RData::TXT(TXT::new(vec!["broker-type=nats".to_owned()])),
        ),
    ];
    if p.tls {
        records.push(Record::from_rdata(
            service,
            p.ttl,
            RData::TXT(TXT::new(vec!["tls".to_owned()])),
        ));
    }
    Ok(records)
}

/// The records of a namespace zone itself.
pub fn zone_records(zone: &str, serial: u32, p: &Publication) -> Result<Vec<Record>, RecordError> {
    let origin = fqdn(zone)?;
    let host = fqdn(&p.fnaa_host)?;
    let mut records = vec![
        Record::from_rdata(
            origin.clone(),
            p.ttl,
            RData::SOA(SOA::new(
                host.clone(),
                fqdn(&format!("hostmaster.{zone}"))?,
                serial,
                3600,
                600,
                86_400,
                p.ttl,
            )),
        ),
        Record::from_rdata(origin.clone(), p.ttl, RData::NS(NS(host.clone()))),
        Record::from_rdata(
            agent_name(zone)?,
            p.ttl,
            RData::SRV(SRV::new(10, 10, p.fnap_port, host.clone())),
        ),
    ];
    let mut hosts = vec![host];
    let broker = fqdn(&p.broker_host)?;
    if !hosts.contains(&broker) {
        hosts.push(broker);
    }
    // The draft's use cases look the agent up by its own name too
    // (`fnaa.unix.ar. IN SRV 0 0 61000 fnaa.unix.ar.`): published beside
    // `_fnaa._tcp.<namespace>` in the zone that holds the agent's name.
    let agent = fqdn(&p.fnaa_host)?;
    if origin.zone_of(&agent) {
        records.push(Record::from_rdata(
            agent.clone(),
            p.ttl,
            RData::SRV(SRV::new(10, 10, p.fnap_port, agent)),
        ));
    }
    for name in hosts {
        if origin.zone_of(&name) {
            for ip in &p.addresses {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                records.push(Record::from_rdata(name.clone(), p.ttl, rdata));
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RecordType;

    fn publication() -> Publication {
        Publication {
            fnaa_host: "fnaa.syndeno.com".into(),
            fnap_port: 65432,
            tls: true,
            addresses: vec!["127.0.0.1".parse().expect("ip")],
            broker_host: "fnaa.syndeno.com".into(),
            broker_port: 4222,
            ttl: 875,
        }
    }

    #[test]
    fn a_flow_publishes_the_drafts_records() {
        let flow = FlowName::parse("notifications.calendar.people.syndeno.com").expect("valid");
        let records = flow_records(&flow, &publication()).expect("records");
        let text: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        let expected = [
            "notifications.calendar.people.syndeno.com. 875 IN PTR _flow._tcp.notifications.calendar.people.syndeno.com.",
            "_flow._tcp.notifications.calendar.people.syndeno.com. 875 IN SRV 10 10 65432 fnaa.syndeno.com.",
            "_flow._tcp.notifications.calendar.people.syndeno.com. 875 IN TXT tls",
            "_queue._flow._tcp.notifications.calendar.people.syndeno.com. 875 IN SRV 10 10 4222 fnaa.syndeno.com.",
            "_queue._flow._tcp.notifications.calendar.people.syndeno.com. 875 IN TXT broker-type=nats",
        ];
        for line in expected {
            assert!(text.iter().any(|t| t == line), "{line} in {text:#?}");
        }
    }

    #[test]
    fn a_zone_has_soa_ns_agent_and_its_hosts_addresses() {
        let records = zone_records("syndeno.com", 7, &publication()).expect("records");
        let types: Vec<RecordType> = records.iter().map(|r| r.record_type()).collect();
        assert_eq!(
            types,
            [
                RecordType::SOA,
                RecordType::NS,
                RecordType::SRV,
                RecordType::SRV,
                RecordType::A
            ]
        );
        let at_agent = records
            .iter()
            .find(|r| r.name.to_utf8() == "fnaa.syndeno.com." && r.record_type() == RecordType::SRV)
            .expect("an SRV record at the agent's own name, as the draft's use cases");
        assert_eq!(
            at_agent.data.to_string(),
            "10 10 65432 fnaa.syndeno.com.",
            "{at_agent:?}"
        );
        let outside = zone_records("people.example.org", 7, &publication()).expect("records");
        assert!(
            !outside.iter().any(|r| r.record_type() == RecordType::A),
            "no glue for a host outside the zone"
        );
    }
}
