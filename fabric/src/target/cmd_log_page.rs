//! Get Log Page: error information, SMART / health, firmware slot, changed
//! namespace list, commands supported and effects, ANA and discovery.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::wire::log_page::{
    encode_ana_log, encode_changed_namespaces, encode_command_effects, encode_discovery_log,
    encode_firmware_slot, AnaGroup, GetLogPage, SmartLog, ANA_LSP_RGO, ERROR_ENTRY_LEN,
};
use crate::wire::opcode::{admin, io, log};
use crate::wire::{Command, Status, NSID_ALL};

use super::controller::ERROR_LOG_ENTRIES;
use super::port::ANA_CHANGE_COUNT;
use super::queue::{Failure, Outcome, Queue, Session};
use super::request::{Op, Transfer};

pub(crate) fn parse(_q: &Queue, s: &Session, cmd: &Command) -> Result<(Op, Transfer), Failure> {
    let g = GetLogPage::from_command(cmd);
    let supported = if s.ctrl.is_discovery() {
        matches!(g.lid, log::DISCOVERY | log::ERROR)
    } else {
        matches!(
            g.lid,
            log::ERROR
                | log::SMART
                | log::FIRMWARE_SLOT
                | log::CHANGED_NAMESPACES
                | log::COMMAND_EFFECTS
                | log::ANA
        )
    };
    if !supported {
        return Err(Status::INVALID_LOG_PAGE.into());
    }
    if g.offset % 4 != 0 {
        return Err(Status::INVALID_FIELD.into());
    }
    if g.lid == log::SMART && cmd.nsid != 0 && cmd.nsid != NSID_ALL {
        // SMART data is kept for the whole controller only (LPA bit 0 clear).
        return Err(Status::INVALID_FIELD.into());
    }
    let len = u32::try_from(g.len).map_err(|_| Failure::from(Status::INVALID_FIELD))?;
    Ok((Op::GetLogPage(g), Transfer::ToHost(len)))
}

pub(crate) fn execute(
    q: &Queue,
    s: &Session,
    _cmd: &Command,
    g: GetLogPage,
) -> Result<Outcome, Failure> {
    let ctrl = &s.ctrl;
    let page = match g.lid {
        log::ERROR => {
            let mut b = vec![0u8; ERROR_LOG_ENTRIES * ERROR_ENTRY_LEN];
            for (i, e) in ctrl.error_log().iter().enumerate() {
                b[i * ERROR_ENTRY_LEN..(i + 1) * ERROR_ENTRY_LEN].copy_from_slice(&e.encode());
            }
            b
        }
        log::SMART => smart_log(s).encode(),
        log::FIRMWARE_SLOT => encode_firmware_slot(env!("CARGO_PKG_VERSION")),
        log::CHANGED_NAMESPACES => encode_changed_namespaces(&ctrl.changed_namespaces(g.rae)),
        log::COMMAND_EFFECTS => encode_command_effects(
            &[
                admin::GET_LOG_PAGE,
                admin::IDENTIFY,
                admin::ABORT,
                admin::SET_FEATURES,
                admin::GET_FEATURES,
                admin::ASYNC_EVENT_REQUEST,
                admin::KEEP_ALIVE,
            ],
            &[
                io::FLUSH,
                io::WRITE,
                io::READ,
                io::WRITE_ZEROES,
                io::DATASET_MANAGEMENT,
            ],
            &[io::WRITE, io::WRITE_ZEROES, io::DATASET_MANAGEMENT],
        ),
        log::ANA => ana_log(s, g.lsp & ANA_LSP_RGO != 0),
        log::DISCOVERY => {
            let entries = q.target.discovery_entries(&ctrl.host.nqn);
            encode_discovery_log(q.target.discovery_generation(), &entries)
        }
        _ => return Err(Status::INVALID_LOG_PAGE.into()),
    };
    let offset = usize::try_from(g.offset).map_err(|_| Failure::from(Status::INVALID_FIELD))?;
    if offset > page.len() {
        return Err(Status::INVALID_FIELD.into());
    }
    ctrl.log_page_read(g.lid, g.rae);
    let end = page.len().min(offset.saturating_add(g.len as usize));
    Ok(Outcome::data(page[offset..end].to_vec()))
}

fn smart_log(s: &Session) -> SmartLog {
    let stats = &s.ctrl.subsystem.stats;
    let units = |bytes: u64| bytes.div_ceil(512 * 1000);
    SmartLog {
        critical_warning: 0,
        temperature_k: 313,
        available_spare: 100,
        spare_threshold: 10,
        percent_used: 0,
        data_units_read: units(stats.bytes_read.load(Ordering::Relaxed)),
        data_units_written: units(stats.bytes_written.load(Ordering::Relaxed)),
        host_reads: stats.reads.load(Ordering::Relaxed),
        host_writes: stats.writes.load(Ordering::Relaxed),
        power_cycles: 1,
        power_on_hours: s.ctrl.uptime().as_secs() / 3600,
        unsafe_shutdowns: 0,
        media_errors: stats.media_errors.load(Ordering::Relaxed),
        error_log_entries: s.ctrl.error_count(),
    }
}

/// The ANA log as seen through the controller's port: every group that has
/// namespaces, in group order.
fn ana_log(s: &Session, groups_only: bool) -> Vec<u8> {
    let port = &s.ctrl.port;
    let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for ns in s.ctrl.subsystem.namespaces() {
        groups.entry(ns.ana_group).or_default().push(ns.nsid);
    }
    let groups: Vec<AnaGroup> = groups
        .into_iter()
        .map(|(id, nsids)| AnaGroup {
            id,
            change_count: port.ana_change_count(id),
            state: port.ana_state(id),
            nsids,
        })
        .collect();
    encode_ana_log(
        ANA_CHANGE_COUNT.load(Ordering::Relaxed),
        &groups,
        groups_only,
    )
}
