//! The pure half of the libvirt backend: a node's domain XML
//! ([`domain_xml`]) and testbed's metadata element inside it
//! ([`parse_metadata`]). No connection, no file system.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::Reader;
use serde::{Deserialize, Serialize};

use crate::accel::Accel;

/// The XML namespace of testbed's `<metadata>` element. A URN, so it names
/// testbed without pointing at any host.
pub const METADATA_NS: &str = "urn:testbed:libvirt:domain:1";

/// The prefix the metadata element is written with (libvirt keeps it).
pub const METADATA_PREFIX: &str = "testbed";

/// The domain name of `node` in `cluster`: `testbed-<cluster>-<node>`.
pub fn domain_name(cluster: &str, node: &str) -> String {
    format!("testbed-{cluster}-{node}")
}

/// Everything that makes one node's libvirt domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig {
    /// The cluster's name (a DNS label), in the domain name and metadata.
    pub cluster: String,
    /// The node's name (a DNS label), in the domain name and metadata.
    pub node: String,
    /// Identifies one `up` of the cluster (e.g. the supervisor's start
    /// time and pid), so domains left by an earlier run can be told from
    /// this run's.
    pub run_id: String,
    /// The cluster's state directory on the machine running the
    /// supervisor; recorded in the metadata so `down` can match domains to
    /// a state directory.
    pub state_dir: PathBuf,
    /// KVM gives domain type `kvm`; TCG gives `qemu`.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The kernel, as a path on the libvirt host (from
    /// [`super::LibvirtHost::ensure_images`]).
    pub kernel: PathBuf,
    /// The stage-1 initramfs, a path on the libvirt host.
    pub initramfs: PathBuf,
    /// The role's `rootfs.erofs`, a path on the libvirt host; attached
    /// read-only and shareable as `vda`.
    pub rootfs: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// The NICs, in the composition's network order.
    pub nics: Vec<UdpNic>,
    /// Where the console stream is written, on the machine calling
    /// [`super::LibvirtHost::start`] (appended to).
    pub console_log: PathBuf,
    /// Whether libvirt destroys the domain when the connection that
    /// started it closes (`VIR_DOMAIN_START_AUTODESTROY`): the libvirt
    /// analogue of the QEMU backend's parent-death signal. Off, domains
    /// outlive the process that started them and are found again through
    /// [`super::LibvirtHost::list`].
    pub autodestroy: bool,
}

/// One NIC: a virtio-net device whose frames travel as UDP datagrams
/// between `local` (QEMU binds it) and `switch` (the switch port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpNic {
    /// The MAC address, `52:54:00:xx:xx:xx`.
    pub mac: String,
    /// The switch port's address, as seen from the libvirt host.
    pub switch: SocketAddr,
    /// The address QEMU binds on the libvirt host; the switch port's peer.
    pub local: SocketAddr,
}

/// What testbed records in a domain's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainMetadata {
    /// The cluster.
    pub cluster: String,
    /// The node.
    pub node: String,
    /// The run that started the domain.
    pub run_id: String,
    /// The cluster's state directory on the supervisor's machine.
    pub state_dir: PathBuf,
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl DomainConfig {
    /// The domain's name, `testbed-<cluster>-<node>`.
    pub fn name(&self) -> String {
        domain_name(&self.cluster, &self.node)
    }

    /// The metadata this domain carries.
    pub fn metadata(&self) -> DomainMetadata {
        DomainMetadata {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            run_id: self.run_id.clone(),
            state_dir: self.state_dir.clone(),
        }
    }

    /// Checks what libvirt would otherwise reject less clearly, or
    /// misread: names that are not DNS labels, zero memory or CPUs, MACs
    /// that are not unicast, paths that are not UTF-8 (the XML is text).
    /// Returns the reason.
    pub fn check(&self) -> Result<(), String> {
        for (what, name) in [("cluster", &self.cluster), ("node", &self.node)] {
            if !is_dns_label(name) {
                return Err(format!(
                    "the {what} name \"{name}\" is not a DNS label (a-z, 0-9, -)"
                ));
            }
        }
        if self.memory_mib == 0 {
            return Err("memory must be at least 1 MiB".into());
        }
        if self.cpus == 0 {
            return Err("a VM needs at least one CPU".into());
        }
        let paths: [(&str, &Path); 5] = [
            ("kernel", &self.kernel),
            ("initramfs", &self.initramfs),
            ("rootfs", &self.rootfs),
            ("state directory", &self.state_dir),
            ("console log", &self.console_log),
        ];
        for (what, path) in paths {
            if path.to_str().is_none() {
                return Err(format!(
                    "the {what} path {} is not valid UTF-8",
                    path.display()
                ));
            }
        }
        for nic in &self.nics {
            if !crate::qemu::is_unicast_mac(&nic.mac) {
                return Err(format!(
                    "\"{}\" is not a unicast MAC address like 52:54:00:12:34:56",
                    nic.mac
                ));
            }
        }
        Ok(())
    }
}

/// Escapes text for both XML character data and attribute values: the
/// one escape of every XML file testbed writes.
pub use testbed_model::xml::escape;

fn path(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// The metadata element alone, as libvirt stores it under `<metadata>`.
pub fn metadata_xml(meta: &DomainMetadata) -> String {
    let p = METADATA_PREFIX;
    format!(
        "<{p}:domain xmlns:{p}=\"{METADATA_NS}\">\n\
         \x20     <{p}:cluster>{}</{p}:cluster>\n\
         \x20     <{p}:node>{}</{p}:node>\n\
         \x20     <{p}:run>{}</{p}:run>\n\
         \x20     <{p}:state-dir>{}</{p}:state-dir>\n\
         \x20   </{p}:domain>",
        escape(&meta.cluster),
        escape(&meta.node),
        escape(&meta.run_id),
        path(&meta.state_dir),
    )
}

/// Reads testbed's metadata element inside a whole domain XML. `None`
/// unless an element `domain` in testbed's namespace names a cluster and
/// a node.
pub fn parse_metadata(xml: &str) -> Option<DomainMetadata> {
    parse(xml, true)
}

/// Reads testbed's metadata element as `virDomainGetMetadata` returns it
/// when asked for testbed's namespace: the element alone, with the
/// namespace and prefixes already stripped by libvirt (`<domain>
/// <cluster>…`). `None` unless it names a cluster and a node.
pub fn parse_metadata_element(xml: &str) -> Option<DomainMetadata> {
    parse(xml, false)
}

fn parse(xml: &str, in_domain_xml: bool) -> Option<DomainMetadata> {
    let mut reader = Reader::from_str(xml);
    let mut root = true;
    let mut inside = false;
    let mut field: Option<String> = None;
    let (mut cluster, mut node, mut run, mut state) = (None, None, None, None);
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                let is_root = std::mem::replace(&mut root, false);
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if local == "domain" && !inside {
                    let ours = if in_domain_xml {
                        e.attributes().flatten().any(|a| {
                            a.key.as_ref().starts_with(b"xmlns")
                                && a.value.as_ref() == METADATA_NS.as_bytes()
                        })
                    } else {
                        is_root
                    };
                    if ours {
                        inside = true;
                    }
                } else if inside {
                    field = Some(local);
                }
            }
            Event::Text(t) if inside => {
                let text = t.unescape().ok()?.into_owned();
                match field.as_deref() {
                    Some("cluster") => cluster = Some(text),
                    Some("node") => node = Some(text),
                    Some("run") => run = Some(text),
                    Some("state-dir") => state = Some(text),
                    _ => {}
                }
            }
            Event::End(e) => {
                if inside && e.local_name().as_ref() == b"domain" {
                    break;
                }
                field = None;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Some(DomainMetadata {
        cluster: cluster?,
        node: node?,
        run_id: run.unwrap_or_default(),
        state_dir: PathBuf::from(state.unwrap_or_default()),
    })
}

/// The domain XML of `config` (for `virDomainCreateXML`: a transient
/// domain).
///
/// Pure; [`DomainConfig::check`] says whether the result is meaningful.
/// The layout mirrors the QEMU backend's command line
/// (`crate::qemu::argv`, `docs/qemu.md`); `docs/libvirt.md` explains
/// every element.
pub fn domain_xml(config: &DomainConfig) -> String {
    let mut x = String::new();
    let kind = match config.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    // `write!` to a String cannot fail.
    let _ = writeln!(x, "<domain type='{kind}'>");
    let _ = writeln!(x, "  <name>{}</name>", escape(&config.name()));
    let _ = writeln!(x, "  <metadata>");
    let _ = writeln!(x, "    {}", metadata_xml(&config.metadata()));
    let _ = writeln!(x, "  </metadata>");
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", config.memory_mib);
    // Guest RAM from a memfd, shared, as in the QEMU backend: not backed
    // by transparent huge pages, so an idle node costs what it touched.
    x.push_str("  <memoryBacking>\n    <source type='memfd'/>\n    <access mode='shared'/>\n  </memoryBacking>\n");
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", config.cpus);
    x.push_str("  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n");
    let _ = writeln!(x, "    <kernel>{}</kernel>", path(&config.kernel));
    let _ = writeln!(x, "    <initrd>{}</initrd>", path(&config.initramfs));
    let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(&config.cmdline));
    x.push_str("  </os>\n");
    x.push_str("  <features>\n    <acpi/>\n");
    if config.accel == Accel::Tcg {
        // QEMU 7.2 defaults to a 1 GiB translation cache; 32 MiB as in
        // the QEMU backend (accel::Accel::qemu_args).
        x.push_str("    <tcg>\n      <tb-cache unit='MiB'>32</tb-cache>\n    </tcg>\n");
    }
    x.push_str("  </features>\n");
    if config.accel == Accel::Kvm {
        x.push_str("  <cpu mode='host-passthrough'/>\n");
    }
    // A guest reboot, power-off or crash ends the domain (the QEMU
    // backend's -no-reboot): restarting a node means starting it again.
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    // The root: read-only, and shareable so libvirt lets every node of a
    // role attach the same volume.
    x.push_str("    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n");
    let _ = writeln!(x, "      <source file='{}'/>", path(&config.rootfs));
    x.push_str("      <target dev='vda' bus='virtio'/>\n      <readonly/>\n      <shareable/>\n    </disk>\n");
    for nic in &config.nics {
        x.push_str("    <interface type='udp'>\n");
        let _ = writeln!(x, "      <mac address='{}'/>", escape(&nic.mac));
        let _ = writeln!(
            x,
            "      <source address='{}' port='{}'>",
            nic.switch.ip(),
            nic.switch.port()
        );
        let _ = writeln!(
            x,
            "        <local address='{}' port='{}'/>",
            nic.local.ip(),
            nic.local.port()
        );
        x.push_str("      </source>\n      <model type='virtio'/>\n");
        // No iPXE option ROM: nothing boots from the network.
        x.push_str("      <rom enabled='no'/>\n    </interface>\n");
    }
    // The agent's virtio-serial port; libvirt picks the host-side socket
    // path, and the host reaches it with virDomainOpenChannel.
    x.push_str("    <channel type='unix'>\n      <source mode='bind'/>\n");
    let _ = writeln!(
        x,
        "      <target type='virtio' name='{}'/>",
        escape(testbed_proto::VIRTIO_PORT_NAME)
    );
    x.push_str("    </channel>\n");
    // The serial console on a pty, read with virDomainOpenConsole.
    x.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n");
    x.push_str(
        "    <console type='pty'>\n      <target type='serial' port='0'/>\n    </console>\n",
    );
    x.push_str("    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    </rng>\n");
    // Nothing implicit: no USB controller, no balloon; no <graphics>,
    // <video> or <interface> beyond the ones above.
    x.push_str("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n");
    x.push_str("  </devices>\n</domain>\n");
    x
}

fn attr(e: &quick_xml::events::BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// The state libvirt shows for the agent's port in a running domain's XML
/// (`<target type='virtio' name=… state='connected'/>`): `Some(true)`
/// while the guest holds the port open, `Some(false)` once it closed it,
/// `None` if the XML has no such port or no state for it.
pub fn agent_port_connected(xml: &str) -> Option<bool> {
    let mut reader = Reader::from_str(xml);
    let mut in_channel = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == b"channel" => in_channel = true,
            Event::End(e) if e.local_name().as_ref() == b"channel" => in_channel = false,
            Event::Empty(e) | Event::Start(e)
                if in_channel
                    && e.local_name().as_ref() == b"target"
                    && attr(&e, b"name").as_deref() == Some(testbed_proto::VIRTIO_PORT_NAME) =>
            {
                return match attr(&e, b"state").as_deref() {
                    Some("connected") => Some(true),
                    Some("disconnected") => Some(false),
                    _ => None,
                };
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The domain XML a machine saved by testbed is restored with
/// (`virDomainRestoreFlags`): `saved`, the XML libvirt keeps in the saved
/// file, with what belongs to this `up` of the cluster taken from
/// `config`: testbed's metadata (the run, the state directory) and each
/// UDP NIC's two ends (the switch ports are new at every `up`). Nothing
/// the guest sees changes, so libvirt's check that the machine is the
/// same one holds. Errors when the saved NICs are not `config`'s (another
/// count, another MAC): the snapshot is of another machine.
pub fn restore_xml(saved: &str, config: &DomainConfig) -> Result<String, String> {
    use quick_xml::events::BytesStart;
    let mut reader = Reader::from_str(saved);
    let mut writer = quick_xml::Writer::new(Vec::new());
    let mut nics = config.nics.iter();
    let mut nic: Option<&UdpNic> = None;
    let mut count = 0usize;
    let mut skipping = 0usize;
    let rewrite = |e: &BytesStart<'_>, addr: &SocketAddr| {
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let mut out = BytesStart::new(name);
        for a in e.attributes().flatten() {
            match a.key.as_ref() {
                b"address" | b"port" => {}
                _ => out.push_attribute(a),
            }
        }
        out.push_attribute(("address", addr.ip().to_string().as_str()));
        out.push_attribute(("port", addr.port().to_string().as_str()));
        out
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("the saved domain XML does not parse: {e}"))?;
        if skipping > 0 {
            match event {
                Event::Start(_) => skipping += 1,
                Event::End(_) => skipping -= 1,
                Event::Eof => return Err("the saved domain XML ends early".to_owned()),
                _ => {}
            }
            if skipping == 0 {
                let ours = metadata_xml(&config.metadata());
                writer.get_mut().extend_from_slice(ours.as_bytes());
            }
            continue;
        }
        let out = match event {
            Event::Eof => break,
            Event::Start(e)
                if e.local_name().as_ref() == b"domain"
                    && e.attributes().flatten().any(|a| {
                        a.key.as_ref().starts_with(b"xmlns")
                            && a.value.as_ref() == METADATA_NS.as_bytes()
                    }) =>
            {
                skipping = 1;
                continue;
            }
            Event::Start(e)
                if e.local_name().as_ref() == b"interface"
                    && attr(&e, b"type").as_deref() == Some("udp") =>
            {
                count += 1;
                nic = nics.next();
                if nic.is_none() {
                    return Err(format!(
                        "the saved machine has more NICs than the node's {}",
                        config.nics.len()
                    ));
                }
                Event::Start(e)
            }
            Event::End(e) if e.local_name().as_ref() == b"interface" => {
                nic = None;
                Event::End(e)
            }
            Event::Empty(e) if nic.is_some() && e.local_name().as_ref() == b"mac" => {
                let want = nic.map(|n| n.mac.to_ascii_lowercase());
                let have = attr(&e, b"address").map(|m| m.to_ascii_lowercase());
                if have != want {
                    return Err(format!(
                        "the saved machine's NIC {count} has MAC {}, the node's has {}",
                        have.unwrap_or_default(),
                        want.unwrap_or_default()
                    ));
                }
                Event::Empty(e)
            }
            Event::Start(e) if e.local_name().as_ref() == b"source" => match nic {
                Some(n) => Event::Start(rewrite(&e, &n.switch)),
                None => Event::Start(e),
            },
            Event::Empty(e) if e.local_name().as_ref() == b"local" => match nic {
                Some(n) => Event::Empty(rewrite(&e, &n.local)),
                None => Event::Empty(e),
            },
            other => other,
        };
        writer
            .write_event(out)
            .map_err(|e| format!("cannot write the domain XML: {e}"))?;
    }
    if count != config.nics.len() {
        return Err(format!(
            "the saved machine has {count} NICs, the node {}",
            config.nics.len()
        ));
    }
    String::from_utf8(writer.into_inner()).map_err(|e| e.to_string())
}
