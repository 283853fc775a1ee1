//! Test infrastructure for the runtime's tests that start real QEMU
//! processes: a stand-in kernel, and node configurations in a
//! temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed_runtime::accel::Accel;
use testbed_runtime::qemu::{NicConfig, Ram, VmConfig};

/// Generous bound for anything QEMU does on a busy 2-core host; only a hang
/// takes this long.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Writes the smallest file QEMU's x86 loader accepts as a bzImage: the
/// boot protocol header (`HdrS`, version 2.15, loaded high, an initrd
/// limit) and a few sectors of zeros. QEMU only loads it into guest
/// memory; the tests start VMs paused (`-S`), so it never runs. This keeps
/// the tests independent of the host having a kernel in /boot.
pub fn write_fake_kernel(path: &Path) {
    let mut b = vec![0u8; 8192];
    b[0x1f1] = 4; // setup sectors
    b[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    b[0x211] = 0x01; // LOADED_HIGH
    b[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    std::fs::write(path, b).expect("write fake kernel");
}

/// Boot files for paused VMs: the fake kernel, an empty initramfs and a
/// small rootfs file, in `dir`.
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
}

impl BootFiles {
    pub fn new(dir: &Path) -> BootFiles {
        let files = BootFiles {
            kernel: dir.join("kernel"),
            initramfs: dir.join("initramfs"),
            rootfs: dir.join("rootfs.erofs"),
        };
        write_fake_kernel(&files.kernel);
        std::fs::write(&files.initramfs, b"").expect("write initramfs");
        std::fs::write(&files.rootfs, vec![0u8; 1 << 20]).expect("write rootfs");
        files
    }
}

/// A node named `name` with one NIC per entry of `networks`, sockets and
/// logs under `dir`.
pub fn node(name: &str, accel: Accel, boot: &BootFiles, dir: &Path, networks: &[&str]) -> VmConfig {
    VmConfig {
        name: name.to_string(),
        memory_mib: 128,
        cpus: 1,
        accel,
        kernel: boot.kernel.clone(),
        initramfs: boot.initramfs.clone(),
        rootfs: boot.rootfs.clone(),
        cmdline: "console=ttyS0 panic=-1".to_string(),
        nics: networks
            .iter()
            .enumerate()
            .map(|(i, net)| NicConfig {
                mac: format!("52:54:00:00:00:{:02x}", i + 1),
                local: dir.join(format!("nic-{name}-{net}.sock")),
                remote: dir.join(format!("sw-{name}-{net}.sock")),
            })
            .collect(),
        agent_socket: dir.join(format!("{name}.agent.sock")),
        console_socket: dir.join(format!("{name}.console.sock")),
        console_log: dir.join(format!("{name}.console.log")),
        qmp_socket: dir.join(format!("{name}.qmp.sock")),
        ram: Ram::default(),
        incoming: false,
    }
}
