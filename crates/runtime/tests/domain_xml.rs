//! The libvirt domain of a node, as data: snapshots of `libvirt::domain_xml`
//! for typical nodes, compared with `tests/snapshots/*.xml`.
//! `UPDATE_SNAPSHOTS=1` rewrites them; review the diff. Also the rules
//! every domain must follow (no way out of the cluster, metadata that
//! round-trips, escaping).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use testbed_runtime::accel::Accel;
use testbed_runtime::libvirt::{
    agent_port_connected, default_pool_dir, domain_xml, parse_metadata, parse_metadata_element,
    restore_xml, uri_is_remote, DomainConfig, UdpNic, METADATA_NS,
};
use testbed_test_support::assert_snapshot;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A node as the supervisor would lay it out: image volumes in testbed's
/// pool on the libvirt host, NICs to switch ports on loopback.
fn node(name: &str, accel: Accel, networks: &[&str]) -> DomainConfig {
    let pool = Path::new("/var/lib/libvirt/images/testbed");
    let key = "3f1c0a9e";
    DomainConfig {
        cluster: "slurm".into(),
        node: name.into(),
        run_id: "20240101T000000-4242".into(),
        state_dir: PathBuf::from("/run/testbed/slurm"),
        accel,
        memory_mib: 512,
        cpus: 2,
        kernel: pool.join(format!("{key}-kernel")),
        initramfs: pool.join(format!("{key}-initramfs")),
        rootfs: pool.join(format!("{key}-rootfs.erofs")),
        cmdline: "console=ttyS0 panic=-1 quiet testbed.root=/dev/vda".into(),
        nics: networks
            .iter()
            .enumerate()
            .map(|(i, _)| UdpNic {
                mac: format!("52:54:00:2a:00:{:02x}", i + 1),
                switch: addr(&format!("127.0.0.1:{}", 40000 + 2 * i)),
                local: addr(&format!("127.0.0.1:{}", 40001 + 2 * i)),
            })
            .collect(),
        console_log: PathBuf::from(format!("/run/testbed/slurm/{name}.console.log")),
        autodestroy: false,
    }
}

#[test]
fn node_with_two_nics_under_tcg() {
    let config = node("compute1", Accel::Tcg, &["lan", "storage"]);
    config.check().expect("valid");
    assert_snapshot!("two-nics-tcg.xml", &domain_xml(&config));
}

#[test]
fn node_with_one_nic_under_kvm() {
    let config = node("ctl", Accel::Kvm, &["lan"]);
    config.check().expect("valid");
    assert_snapshot!("one-nic-kvm.xml", &domain_xml(&config));
}

/// What the snapshots show, as rules for any node: the only interfaces are
/// the UDP ones to the switch, nothing implicit is added, and the domain
/// type follows the accelerator.
#[test]
fn no_device_reaches_outside_the_cluster() {
    let xml = domain_xml(&node("compute1", Accel::Tcg, &["lan", "storage"]));
    assert_eq!(xml.matches("<interface ").count(), 2, "{xml}");
    assert_eq!(xml.matches("<interface type='udp'>").count(), 2, "{xml}");
    for absent in [
        "<graphics",
        "<video",
        "<hostdev",
        "<filesystem",
        "<redirdev",
    ] {
        assert!(!xml.contains(absent), "{absent} in {xml}");
    }
    assert!(xml.contains("<controller type='usb' model='none'/>"));
    assert!(xml.contains("<memballoon model='none'/>"));
    assert!(xml.starts_with("<domain type='qemu'>"));
    let kvm = domain_xml(&node("ctl", Accel::Kvm, &[]));
    assert!(kvm.starts_with("<domain type='kvm'>"));
    assert!(!kvm.contains("<interface"));
}

#[test]
fn metadata_round_trips() {
    let config = node("compute1", Accel::Tcg, &["lan"]);
    let xml = domain_xml(&config);
    assert!(xml.contains(METADATA_NS));
    assert_eq!(parse_metadata(&xml), Some(config.metadata()));
    // In a whole domain XML, libvirt may choose its own prefix.
    let prefixed = format!(
        "<domain type='qemu'><metadata><tb:domain xmlns:tb=\"{METADATA_NS}\"><tb:cluster>slurm</tb:cluster><tb:node>n1</tb:node><tb:run>r</tb:run><tb:state-dir>/s</tb:state-dir></tb:domain></metadata></domain>"
    );
    let meta = parse_metadata(&prefixed).expect("parsed");
    assert_eq!((meta.cluster.as_str(), meta.node.as_str()), ("slurm", "n1"));
    // Another namespace, or a missing field, is not testbed's.
    let foreign = prefixed.replace(METADATA_NS, "urn:example:other");
    assert_eq!(parse_metadata(&foreign), None);
    // What virDomainGetMetadata returns (seen with libvirt 9.0): the
    // element alone, namespace and prefixes stripped.
    let element = "<domain>\n  <cluster>slurm</cluster>\n  <node>compute1</node>\n  <run>20240101T000000-4242</run>\n  <state-dir>/run/testbed/slurm</state-dir>\n</domain>\n";
    assert_eq!(parse_metadata_element(element), Some(config.metadata()));
    assert_eq!(
        parse_metadata_element("<domain><node>x</node></domain>"),
        None
    );
    assert_eq!(parse_metadata("<domain><name>x</name></domain>"), None);
    assert_eq!(parse_metadata("not xml <<<"), None);
}

/// A saved machine as libvirt 9.0 keeps it in its file (shape seen with
/// `virsh save-image-dumpxml`): the domain testbed made, with libvirt's
/// additions (uuid, PCI addresses, the agent socket's path).
fn saved_xml(config: &DomainConfig) -> String {
    domain_xml(config)
        .replace(
            "<memory unit='MiB'>",
            "<uuid>7d1e9c2a-5b7e-4f7a-9a51-0c2f6e0d9b11</uuid>\n  <memory unit='MiB'>",
        )
        .replace(
            "<model type='virtio'/>\n",
            "<model type='virtio'/>\n      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>\n",
        )
        .replace(
            "<source mode='bind'/>",
            "<source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-testbed-slurm-c/org.testbed.agent'/>",
        )
}

/// A cluster snapshot restored by another `up` keeps the machine (name,
/// uuid, MACs, devices) and takes this run's metadata and switch ports.
#[test]
fn a_saved_machine_is_restored_with_this_runs_metadata_and_ports() {
    let before = node("compute1", Accel::Tcg, &["lan", "storage"]);
    let saved = saved_xml(&before);
    let mut now = before.clone();
    now.run_id = "20240202T000000-77".into();
    now.state_dir = PathBuf::from("/run/user/1000/testbed/slurm");
    for (i, nic) in now.nics.iter_mut().enumerate() {
        nic.switch = addr(&format!("127.0.0.1:{}", 51000 + 2 * i));
        nic.local = addr(&format!("127.0.0.1:{}", 51001 + 2 * i));
    }
    let xml = restore_xml(&saved, &now).expect("restored");
    assert_eq!(parse_metadata(&xml), Some(now.metadata()));
    for nic in &now.nics {
        assert!(
            xml.contains(&format!(
                "<source address=\"127.0.0.1\" port=\"{}\">",
                nic.switch.port()
            )),
            "{xml}"
        );
        assert!(
            xml.contains(&format!(
                "<local address=\"127.0.0.1\" port=\"{}\"/>",
                nic.local.port()
            )),
            "{xml}"
        );
    }
    for old in ["40000", "40001", "40002", "40003", "20240101T000000-4242"] {
        assert!(!xml.contains(old), "{old} left in {xml}");
    }
    // What the guest sees is untouched.
    for kept in [
        "<uuid>7d1e9c2a-5b7e-4f7a-9a51-0c2f6e0d9b11</uuid>",
        "<name>testbed-slurm-compute1</name>",
        "<mac address='52:54:00:2a:00:01'/>",
        "<mac address='52:54:00:2a:00:02'/>",
        "bus='0x01' slot='0x00'",
        "org.testbed.agent'/>",
    ] {
        assert!(xml.contains(kept), "{kept} in {xml}");
    }

    // Another machine: a MAC or the number of NICs differs.
    let mut other = now.clone();
    other.nics[1].mac = "52:54:00:2a:00:99".into();
    let e = restore_xml(&saved, &other).unwrap_err();
    assert!(e.contains("52:54:00:2a:00:99"), "{e}");
    let mut fewer = now.clone();
    fewer.nics.pop();
    assert!(restore_xml(&saved, &fewer)
        .unwrap_err()
        .contains("more NICs"));
    let mut more = now.clone();
    more.nics.push(now.nics[0].clone());
    assert!(restore_xml(&saved, &more).unwrap_err().contains("2 NICs"));
    assert!(restore_xml("<domain><devices>", &now).is_err());
}

/// The agent port's state in a running domain's XML, as libvirt reports
/// the guest opening and closing it.
#[test]
fn the_agent_port_state_is_read_from_the_live_xml() {
    let live = |state: &str| {
        format!(
            "<domain><devices><channel type='unix'><source mode='bind' path='/x'/><target type='virtio' name='{}'{state}/><alias name='channel0'/></channel><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/></channel></devices></domain>",
            testbed_proto::VIRTIO_PORT_NAME
        )
    };
    assert_eq!(
        agent_port_connected(&live(" state='connected'")),
        Some(true)
    );
    assert_eq!(
        agent_port_connected(&live(" state='disconnected'")),
        Some(false)
    );
    assert_eq!(agent_port_connected(&live("")), None);
    assert_eq!(agent_port_connected("<domain><devices/></domain>"), None);
}

/// Names are DNS labels, but paths and the command line may contain
/// anything XML treats specially; the document stays well-formed and
/// the values come back unchanged.
#[test]
fn values_are_escaped() {
    let mut config = node("compute1", Accel::Tcg, &["lan"]);
    let odd = "/tmp/a&b <c> \"d\" 'e'";
    config.state_dir = PathBuf::from(odd);
    config.rootfs = PathBuf::from(format!("{odd}/rootfs.erofs"));
    config.cmdline = "console=ttyS0 x=\"<&>\"".into();
    config.run_id = "r&<'\"".into();
    config.check().expect("valid");
    let xml = domain_xml(&config);
    assert!(!xml.contains(odd), "{xml}");
    assert!(
        xml.contains("/tmp/a&amp;b &lt;c&gt; &quot;d&quot; &apos;e&apos;"),
        "{xml}"
    );
    // Well-formed: every element read back, and the metadata intact.
    let meta = parse_metadata(&xml).expect("metadata");
    assert_eq!(meta.state_dir, PathBuf::from(odd));
    assert_eq!(meta.run_id, "r&<'\"");
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut cmdline = None;
    let mut in_cmdline = false;
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Start(e) => in_cmdline = e.name().as_ref() == b"cmdline",
            quick_xml::events::Event::Text(t) if in_cmdline => {
                cmdline = Some(t.unescape().expect("text").into_owned())
            }
            quick_xml::events::Event::End(_) => in_cmdline = false,
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(cmdline.as_deref(), Some("console=ttyS0 x=\"<&>\""));
}

#[test]
fn bad_configurations_are_refused() {
    let mut c = node("Compute_1", Accel::Tcg, &["lan"]);
    assert!(c.check().unwrap_err().contains("DNS label"));
    c = node("compute1", Accel::Tcg, &["lan"]);
    c.nics[0].mac = "01:00:5e:00:00:01".into();
    assert!(c.check().unwrap_err().contains("unicast"));
    c = node("compute1", Accel::Tcg, &[]);
    c.cpus = 0;
    assert!(c.check().is_err());
}

#[test]
fn remote_uris() {
    for local in [
        "qemu:///system",
        "qemu:///session",
        "qemu+unix:///system",
        "qemu+unix:///system?socket=/run/x.sock",
    ] {
        assert!(!uri_is_remote(local), "{local}");
    }
    for remote in [
        "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k&no_verify=1",
        "qemu+tcp://127.0.0.1/system",
        "qemu+ssh://host/system",
        "qemu://host.example/system",
    ] {
        assert!(uri_is_remote(remote), "{remote}");
    }
    let home = Path::new("/home/u");
    assert_eq!(
        default_pool_dir("qemu:///session", Some(home)),
        Some(home.join(".local/share/libvirt/images/testbed"))
    );
    assert_eq!(default_pool_dir("qemu+ssh://h/session", Some(home)), None);
    assert_eq!(
        default_pool_dir("qemu+ssh://h/system?keyfile=/k", None),
        Some(PathBuf::from("/var/lib/libvirt/images/testbed"))
    );
}
