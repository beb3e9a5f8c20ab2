//! A bridge that tries to reach the network for every batch: it imports
//! `wasi:sockets`, which a host refuses unless granted.

use flow_sdk::{Batch, Bridge, Error, Output, Processor, Setup};

pub struct NetClient;

impl Processor for NetClient {
    fn init(_setup: &Setup) -> Result<Self, Error> {
        Ok(NetClient)
    }
}

impl Bridge for NetClient {
    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<(), Error> {
        if let Err(e) = std::net::TcpStream::connect("127.0.0.1:9") {
            return Err(Error::failed(format!("no network: {e}")));
        }
        for event in batch.iter() {
            out.forward(&event);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
flow_sdk::bridge!(NetClient);
