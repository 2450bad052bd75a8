//! The target core on arbitrary commands: a connected admin queue and a
//! connected I/O queue each prepare and execute a fuzzed 64-byte command with
//! fuzzed data. Every command must complete with some status; nothing may
//! panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use fabric::target::{Queue, SubsystemConfig, Target, TargetConfig, Transfer, TransportCaps, TransportKind};
use fabric::wire::fabrics::{cc, ConnectCommand, ConnectData, PropertyCommand};
use fabric::wire::sgl::SglDescriptor;
use fabric::wire::Command;
use libfuzzer_sys::fuzz_target;

const NQN: &str = "nqn.2026-11.io.fabric:fuzz";

struct World {
    rt: tokio::runtime::Runtime,
    admin: Arc<Queue>,
    io: Arc<Queue>,
}

fn caps() -> TransportCaps {
    TransportCaps { kind: TransportKind::Tcp, inline_data_size: 16384, keyed_sgls: false, sgl_descriptors: 1 }
}

async fn run(q: &Arc<Queue>, cmd: Command, data: Option<Bytes>, sgl_len: u32) -> fabric::target::Response {
    match q.prepare(cmd, sgl_len) {
        Err(r) => r,
        Ok(req) => q.clone().execute(req, data).await,
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (admin, io) = rt.block_on(async {
            let target = Target::new(TargetConfig::default()).unwrap();
            let sub = target.add_subsystem(SubsystemConfig::new(NQN)).unwrap();
            sub.add_namespace(1, Arc::new(raid::MemoryDevice::new(1 << 20, 512)), 1).unwrap();
            let port = target.add_port("tcp://127.0.0.1:0".parse().unwrap(), true);
            let connect = |qid: u16, cntlid: u16| {
                let cmd = ConnectCommand { recfmt: 0, qid, sqsize: 31, cattr: 0, kato_ms: 0 }
                    .to_command(1, SglDescriptor::in_capsule(1024));
                let data = ConnectData { hostid: [1; 16], cntlid, subnqn: NQN.into(), hostnqn: "nqn.fuzz:host".into() };
                (cmd, Bytes::copy_from_slice(&data.encode()))
            };
            let admin = Queue::new(target.clone(), port.clone(), caps());
            let (cmd, data) = connect(0, 0xffff);
            let r = run(&admin, cmd, Some(data), 1024).await;
            let cntlid = r.cqe.result as u16;
            let en = PropertyCommand::set(2, 0x14, cc::ENABLE_DEFAULT as u64, false);
            run(&admin, en, None, 0).await;
            let io = Queue::new(target.clone(), port, caps());
            let (cmd, data) = connect(1, cntlid);
            assert!(run(&io, cmd, Some(data), 1024).await.cqe.status.is_success());
            std::mem::forget(target);
            (admin, io)
        });
        World { rt, admin, io }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 65 {
        return;
    }
    let w = world();
    let mut raw = [0u8; 64];
    raw.copy_from_slice(&data[1..65]);
    let cmd = Command::decode(&raw);
    // Keep the keep-alive and AER paths from blocking the fuzzer.
    if cmd.opcode == 0x0c {
        return;
    }
    let payload = Bytes::copy_from_slice(&data[65..]);
    let queue = if data[0] & 1 == 0 { &w.admin } else { &w.io };
    w.rt.block_on(async {
        let sgl_len = cmd.dptr.length.min(1 << 21);
        match queue.prepare(cmd, sgl_len) {
            Err(_) => {}
            Ok(req) => {
                let data = matches!(req.transfer, Transfer::ToController(_)).then(|| payload.clone());
                let _ = queue.clone().execute(req, data).await;
            }
        }
    });
});
