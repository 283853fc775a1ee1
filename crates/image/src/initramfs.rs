//! The boot artifacts taken from a finished rootfs: the kernel, and our own
//! stage-1 initramfs.
//!
//! The stage-1 is deliberately tiny: the rootfs's static busybox, the kernel
//! modules needed to reach an erofs root on a virtio disk (the Debian cloud
//! kernel builds virtio, erofs and overlayfs as modules), and a generated
//! `/init` script (`init.sh` next to this file). That script mounts the
//! read-only erofs image, puts a tmpfs overlay on top and switches root into
//! the image's systemd. The kernel command line it understands is documented
//! in `docs/boot.md` and at the top of `init.sh`.
//!
//! Reproducibility: the initramfs is a newc cpio written by [`crate::cpio`]
//! (sorted, root-owned, fixed mtime and inode numbers) and left uncompressed:
//! that removes a compressor from what must stay bit-identical, and under TCG
//! the kernel unpacks a plain cpio faster than it would decompress one. The
//! modules are stored decompressed for the same reasons, so `insmod` never
//! depends on busybox's or the kernel's decompression support.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::cpio::{Cpio, CpioError};

/// The modules the stage-1 loads, by name; their dependencies are added from
/// `modules.dep`. Modules that are built into the kernel are skipped.
/// `virtio_console` and `virtio_net` are not needed to mount the root, but
/// loading them here makes the agent's virtio-serial port and the NICs appear
/// as early as possible.
pub const STAGE1_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "erofs",
    "overlay",
];

/// The kernel command line a VM backend should pass with these artifacts,
/// with `rootfs.erofs` attached as the first virtio-blk disk, read-only
/// (see `docs/boot.md`). Append `testbed.debug` for a shell on failure, and
/// drop `quiet` to see the kernel's and systemd's messages on the console.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet testbed.root=/dev/vda";

/// Every line `/init` prints starts with this; a failure is
/// `testbed-stage1: FAILED at step '...': cause`, after which the VM powers
/// off. A backend can watch the serial log for it to report a node that
/// cannot boot.
pub const CONSOLE_PREFIX: &str = "testbed-stage1: ";

/// What `/init` prints on failure, after [`CONSOLE_PREFIX`].
pub const FAILURE_MARKER: &str = "testbed-stage1: FAILED at step ";

/// The busybox applets linked in the initramfs: what `init.sh` uses, plus
/// what a person in the `testbed.debug` shell is likely to reach for.
const APPLETS: &[&str] = &[
    "cat",
    "chroot",
    "cp",
    "cttyhack",
    "df",
    "dmesg",
    "echo",
    "find",
    "free",
    "grep",
    "head",
    "hexdump",
    "insmod",
    "ip",
    "less",
    "ln",
    "ls",
    "lsmod",
    "mkdir",
    "mknod",
    "mount",
    "mv",
    "poweroff",
    "ps",
    "readlink",
    "reboot",
    "rm",
    "setsid",
    "sh",
    "sleep",
    "stat",
    "switch_root",
    "tail",
    "tr",
    "umount",
    "uname",
    "usleep",
    "vi",
];

const INIT_TEMPLATE: &str = include_str!("init.sh");

/// An error while taking the kernel or building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A file of the rootfs could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// An output could not be written.
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// The rootfs has no kernel.
    #[error("no kernel in rootfs {rootfs}: /boot has no vmlinuz-* (install a kernel package such as linux-image-cloud-amd64)")]
    NoKernel { rootfs: PathBuf },
    /// The rootfs has more than one kernel; which one to boot would be a guess.
    #[error("several kernels in rootfs {rootfs} ({}): keep exactly one kernel package", versions.join(", "))]
    SeveralKernels {
        rootfs: PathBuf,
        versions: Vec<String>,
    },
    /// A kernel version or module path has characters the init script could
    /// not quote safely.
    #[error("unexpected characters in {what} {value:?} from rootfs {rootfs}")]
    UnsafeName {
        what: &'static str,
        value: String,
        rootfs: PathBuf,
    },
    /// `modules.dep` is malformed.
    #[error("{path}:{line}: {message}")]
    ModulesDep {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A wanted module is neither a module file nor built in.
    #[error("kernel module {name} is neither in modules.dep nor built into kernel {kernel}")]
    UnknownModule { name: String, kernel: String },
    /// `modules.dep` names a dependency that has no line of its own.
    #[error(
        "modules.dep of kernel {kernel}: {module} depends on {dependency}, which has no entry"
    )]
    MissingDependency {
        kernel: String,
        module: String,
        dependency: String,
    },
    /// `modules.dep` has a dependency cycle.
    #[error("modules.dep of kernel {kernel}: dependency cycle through {module}")]
    DependencyCycle { kernel: String, module: String },
    /// A compressed module in a format we do not decompress.
    #[error("kernel module {path} is compressed in a format testbed does not support (only .ko, .ko.xz and .ko.zst)")]
    UnsupportedCompression { path: PathBuf },
    /// A compressed module could not be decompressed.
    #[error("cannot decompress kernel module {path}: {message}")]
    Decompress { path: PathBuf, message: String },
    /// The rootfs has no busybox.
    #[error("no /bin/busybox in rootfs {rootfs}: the image needs the busybox-static package")]
    NoBusybox { rootfs: PathBuf },
    /// The rootfs's busybox is dynamically linked (the `busybox` package
    /// instead of `busybox-static`), so it could not run in the initramfs.
    #[error("{path} is not a static x86-64 executable ({reason}): the image needs the busybox-static package")]
    BusyboxNotStatic { path: PathBuf, reason: &'static str },
    /// The cpio archive could not be assembled.
    #[error("initramfs: {0}")]
    Cpio(#[from] CpioError),
}

/// The kernel found in a rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64` (`uname -r`).
    pub version: String,
    /// The kernel image on the host, inside the rootfs.
    pub image: PathBuf,
    /// The module directory on the host, inside the rootfs.
    pub modules_dir: PathBuf,
}

/// How to build the stage-1 initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsOptions {
    /// The mtime of every entry: `SOURCE_DATE_EPOCH`, or 0.
    pub epoch: u64,
    /// The modules to load, by name (`-` and `_` are the same); their
    /// dependencies are added.
    pub modules: Vec<String>,
}

impl Default for InitramfsOptions {
    fn default() -> Self {
        Self {
            epoch: 0,
            modules: STAGE1_MODULES.iter().map(|m| m.to_string()).collect(),
        }
    }
}

/// What [`build_initramfs`] put in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage1 {
    /// The kernel release the modules belong to.
    pub kernel_version: String,
    /// The modules, as paths relative to `/lib/modules/VERSION`, in the order
    /// `/init` loads them.
    pub modules: Vec<String>,
}

/// Finds the one kernel of `rootfs`.
pub fn find_kernel(rootfs: &Path) -> Result<Kernel, InitramfsError> {
    let boot = resolve_in_root(rootfs, "/boot");
    let entries = fs::read_dir(&boot).map_err(|source| InitramfsError::Read {
        path: boot.clone(),
        source,
    })?;
    let mut versions = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| InitramfsError::Read {
            path: boot.clone(),
            source,
        })?;
        if let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            versions.insert(version.to_string());
        }
    }
    let version = match versions.len() {
        0 => {
            return Err(InitramfsError::NoKernel {
                rootfs: rootfs.to_path_buf(),
            })
        }
        1 => versions.into_iter().next().unwrap_or_default(),
        _ => {
            return Err(InitramfsError::SeveralKernels {
                rootfs: rootfs.to_path_buf(),
                versions: versions.into_iter().collect(),
            })
        }
    };
    check_safe(rootfs, "kernel version", &version)?;
    Ok(Kernel {
        image: resolve_in_root(rootfs, &format!("/boot/vmlinuz-{version}")),
        modules_dir: resolve_in_root(rootfs, &format!("/lib/modules/{version}")),
        version,
    })
}

/// Copies the kernel of `rootfs` to `dest` and returns what was copied.
pub fn copy_kernel(rootfs: &Path, dest: &Path) -> Result<Kernel, InitramfsError> {
    let kernel = find_kernel(rootfs)?;
    let bytes = fs::read(&kernel.image).map_err(|source| InitramfsError::Read {
        path: kernel.image.clone(),
        source,
    })?;
    fs::write(dest, bytes).map_err(|source| InitramfsError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(kernel)
}

/// Builds the stage-1 initramfs for the kernel of `rootfs` and writes it to
/// `dest`. The same rootfs and options always give the same bytes.
pub fn build_initramfs(
    rootfs: &Path,
    dest: &Path,
    options: &InitramfsOptions,
) -> Result<Stage1, InitramfsError> {
    let (cpio, stage1) = assemble(rootfs, options)?;
    fs::write(dest, cpio.to_bytes()).map_err(|source| InitramfsError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(stage1)
}

/// Assembles the initramfs in memory.
fn assemble(rootfs: &Path, options: &InitramfsOptions) -> Result<(Cpio, Stage1), InitramfsError> {
    let kernel = find_kernel(rootfs)?;
    let kver = &kernel.version;
    let read = |path: &Path| {
        fs::read(path).map_err(|source| InitramfsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let read_text = |path: &Path| -> Result<String, InitramfsError> {
        Ok(String::from_utf8_lossy(&read(path)?).into_owned())
    };

    let dep_path = kernel.modules_dir.join("modules.dep");
    let deps = ModuleDeps::parse(&read_text(&dep_path)?, &dep_path, kver)?;
    // modules.builtin and modules.softdep are optional to depmod's readers
    // too: a missing file means nothing is built in, or no soft dependencies.
    let optional = |name: &str| match fs::read(kernel.modules_dir.join(name)) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(InitramfsError::Read {
            path: kernel.modules_dir.join(name),
            source,
        }),
    };
    let deps = deps
        .with_builtin(&optional("modules.builtin")?)
        .with_softdeps(&optional("modules.softdep")?);
    let wanted: Vec<&str> = options.modules.iter().map(String::as_str).collect();
    let order = deps.load_order(&wanted)?;

    let mut cpio = Cpio::new(options.epoch)?;
    let busybox = resolve_in_root(rootfs, "/bin/busybox");
    let busybox_bytes = match fs::read(&busybox) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InitramfsError::NoBusybox {
                rootfs: rootfs.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(InitramfsError::Read {
                path: busybox,
                source,
            })
        }
    };
    if let Err(reason) = check_static_elf(&busybox_bytes) {
        return Err(InitramfsError::BusyboxNotStatic {
            path: busybox,
            reason,
        });
    }
    cpio.add_file("bin/busybox", 0o755, busybox_bytes)?;
    for applet in APPLETS {
        cpio.add_symlink(&format!("bin/{applet}"), "busybox")?;
    }
    // The kernel opens /dev/console as init's stdin/stdout/stderr before
    // anything is mounted; without this node the first messages would be lost.
    cpio.add_char_device("dev/console", 0o600, 5, 1)?;
    cpio.add_char_device("dev/null", 0o666, 1, 3)?;
    for dir in ["proc", "sys", "lower", "rw", "newroot", "run", "tmp"] {
        cpio.add_dir(dir, 0o755)?;
    }

    let mut installed = Vec::with_capacity(order.len());
    for relpath in &order {
        check_safe(rootfs, "module path", relpath)?;
        let src = resolve_in_root(rootfs, &format!("/lib/modules/{kver}/{relpath}"));
        let (bytes, plain) = decompress_module(&src, read(&src)?, relpath)?;
        cpio.add_file(&format!("lib/modules/{kver}/{plain}"), 0o644, bytes)?;
        installed.push(plain);
    }
    cpio.add_file("init", 0o755, render_init(kver, &installed).into_bytes())?;
    Ok((
        cpio,
        Stage1 {
            kernel_version: kver.clone(),
            modules: installed,
        },
    ))
}

/// The `/init` script for a kernel version and module load order.
fn render_init(kver: &str, modules: &[String]) -> String {
    INIT_TEMPLATE
        .replace("@KVER@", kver)
        .replace("@MODULES@", &modules.join(" "))
}

/// Kernel versions and module paths are spliced into single-quoted shell
/// words and must be file names; reject anything unusual instead of quoting.
fn check_safe(rootfs: &Path, what: &'static str, value: &str) -> Result<(), InitramfsError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+/~".contains(&b))
        && value
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(InitramfsError::UnsafeName {
            what,
            value: value.to_string(),
            rootfs: rootfs.to_path_buf(),
        })
    }
}

/// Returns the module's bytes uncompressed and its path without the
/// compression suffix.
fn decompress_module(
    src: &Path,
    bytes: Vec<u8>,
    relpath: &str,
) -> Result<(Vec<u8>, String), InitramfsError> {
    let err = |message: String| InitramfsError::Decompress {
        path: src.to_path_buf(),
        message,
    };
    if relpath.ends_with(".ko") {
        Ok((bytes, relpath.to_string()))
    } else if let Some(stem) = relpath.strip_suffix(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut io::Cursor::new(bytes), &mut out)
            .map_err(|e| err(e.to_string()))?;
        Ok((out, stem.to_string()))
    } else if let Some(stem) = relpath.strip_suffix(".zst") {
        let mut out = Vec::new();
        let mut decoder = ruzstd::decoding::StreamingDecoder::new(io::Cursor::new(bytes))
            .map_err(|e| err(e.to_string()))?;
        io::copy(&mut decoder, &mut out).map_err(|e| err(e.to_string()))?;
        Ok((out, stem.to_string()))
    } else {
        Err(InitramfsError::UnsupportedCompression {
            path: src.to_path_buf(),
        })
    }
}

/// Checks that `elf` is a 64-bit little-endian x86-64 executable without a
/// program interpreter, i.e. one that runs without a dynamic loader.
fn check_static_elf(elf: &[u8]) -> Result<(), &'static str> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file");
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if u16_at(18) != Some(62) {
        return Err("not an x86-64 executable");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Err("truncated ELF header");
    };
    let phoff = usize::try_from(phoff).map_err(|_| "bad program header offset")?;
    for i in 0..usize::from(phnum) {
        match u32_at(phoff + i * usize::from(phentsize)) {
            Some(PT_INTERP) => return Err("it is dynamically linked"),
            Some(_) => {}
            None => return Err("truncated program headers"),
        }
    }
    Ok(())
}

/// Resolves `guest` (an absolute path inside the rootfs) to a host path,
/// following symlinks as if `rootfs` were `/`. Debian's merged-/usr links
/// (`/bin -> usr/bin`, `/lib -> usr/lib`) are relative, but an absolute link
/// must never lead out of the rootfs into the host. Components that do not
/// exist are kept as they are, so reading the result reports "not found".
fn resolve_in_root(rootfs: &Path, guest: &str) -> PathBuf {
    const MAX_LINKS: usize = 40;
    let mut todo: VecDeque<OsString> = components(Path::new(guest)).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            done.pop();
            continue;
        }
        let mut host = rootfs.to_path_buf();
        host.extend(&done);
        host.push(&part);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() && links < MAX_LINKS => {
                links += 1;
                if let Ok(target) = fs::read_link(&host) {
                    if target.is_absolute() {
                        done.clear();
                    }
                    for (i, c) in components(&target).enumerate() {
                        todo.insert(i, c);
                    }
                    continue;
                }
                done.push(part);
            }
            _ => done.push(part),
        }
    }
    let mut host = rootfs.to_path_buf();
    host.extend(done);
    host
}

fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// The kernel's module database: `modules.dep` plus, optionally,
/// `modules.builtin` and `modules.softdep`.
#[derive(Debug, Clone, Default)]
pub struct ModuleDeps {
    kernel: String,
    /// Module path (relative to the module directory) to its dependencies,
    /// in the order `modules.dep` lists them.
    deps: BTreeMap<String, Vec<String>>,
    /// Normalized module name to module path.
    by_name: BTreeMap<String, String>,
    /// Normalized names of the modules built into the kernel.
    builtin: BTreeSet<String>,
    /// Normalized module name to its (pre, post) soft dependencies, by name.
    softdeps: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

impl ModuleDeps {
    /// Parses the text of `modules.dep` (read from `path`, for messages) of
    /// kernel `kernel`.
    pub fn parse(text: &str, path: &Path, kernel: &str) -> Result<Self, InitramfsError> {
        let mut db = Self {
            kernel: kernel.to_string(),
            ..Self::default()
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((module, deps)) = line.split_once(':') else {
                return Err(InitramfsError::ModulesDep {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("expected `module.ko: dependencies...`, found {line:?}"),
                });
            };
            let module = module.trim().to_string();
            if db
                .by_name
                .insert(module_name(&module), module.clone())
                .is_some()
                || db.deps.contains_key(&module)
            {
                return Err(InitramfsError::ModulesDep {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("module {module} is listed twice"),
                });
            }
            db.deps.insert(
                module,
                deps.split_whitespace().map(str::to_string).collect(),
            );
        }
        Ok(db)
    }

    /// Adds the text of `modules.builtin` (one module path per line).
    pub fn with_builtin(mut self, text: &str) -> Self {
        self.builtin.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(module_name),
        );
        self
    }

    /// Adds the text of `modules.softdep` (`softdep MOD pre: A B post: C`).
    /// Soft dependencies are optional by definition: names that are not
    /// module files (often aliases, such as `crc32c`) are ignored.
    pub fn with_softdeps(mut self, text: &str) -> Self {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let entry = self.softdeps.entry(module_name(module)).or_default();
            let mut post = false;
            for word in words {
                match word {
                    "pre:" => post = false,
                    "post:" => post = true,
                    name if post => entry.1.push(module_name(name)),
                    name => entry.0.push(module_name(name)),
                }
            }
        }
        self
    }

    /// The module paths to load, in an order where every module comes after
    /// its dependencies, for the modules named in `wanted`. Built-in modules
    /// are left out; a name that is neither a module nor built in is an error.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, InitramfsError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut stack = Vec::new();
        for name in wanted {
            let name = module_name(name);
            match self.by_name.get(&name) {
                Some(path) => self.visit(path, &mut stack, &mut done, &mut order)?,
                None if self.builtin.contains(&name) => {}
                None => {
                    return Err(InitramfsError::UnknownModule {
                        name,
                        kernel: self.kernel.clone(),
                    })
                }
            }
        }
        Ok(order)
    }

    /// Depth-first, post-order: a module is emitted after everything it needs.
    /// Hard dependencies are visited from the end of their list, the order in
    /// which modprobe loads them.
    fn visit(
        &self,
        path: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), InitramfsError> {
        if done.contains(path) {
            return Ok(());
        }
        if stack.iter().any(|p| p == path) {
            return Err(InitramfsError::DependencyCycle {
                kernel: self.kernel.clone(),
                module: path.to_string(),
            });
        }
        stack.push(path.to_string());
        let name = module_name(path);
        let (pre, post) = self.softdeps.get(&name).cloned().unwrap_or_default();
        for soft in &pre {
            self.visit_soft(soft, stack, done, order)?;
        }
        for dep in self.deps.get(path).into_iter().flatten().rev() {
            if !self.deps.contains_key(dep) {
                return Err(InitramfsError::MissingDependency {
                    kernel: self.kernel.clone(),
                    module: path.to_string(),
                    dependency: dep.clone(),
                });
            }
            self.visit(dep, stack, done, order)?;
        }
        stack.pop();
        done.insert(path.to_string());
        order.push(path.to_string());
        for soft in &post {
            self.visit_soft(soft, stack, done, order)?;
        }
        Ok(())
    }

    /// Soft dependencies are loaded when they are module files and skipped
    /// otherwise; a soft dependency already being loaded is not a cycle.
    fn visit_soft(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), InitramfsError> {
        match self.by_name.get(name) {
            Some(path) if !stack.contains(path) => self.visit(path, stack, done, order),
            _ => Ok(()),
        }
    }
}

/// A module's name from its path: the file name without `.ko` and any
/// compression suffix, with `-` read as `_` as the kernel does.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(stem, _)| stem);
    stem.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::parse;

    /// A trimmed copy of Debian bookworm's cloud kernel modules.dep, with the
    /// lines listed in a scrambled order and dependency lists as depmod
    /// writes them.
    const MODULES_DEP: &str = "\
kernel/fs/erofs/erofs.ko: kernel/lib/libcrc32c.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:
kernel/lib/libcrc32c.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/arch/x86/crypto/crc32c-intel.ko:
";

    fn db() -> ModuleDeps {
        ModuleDeps::parse(MODULES_DEP, Path::new("modules.dep"), "6.1.0-test")
            .unwrap()
            .with_builtin(
                "kernel/crypto/crc32c_generic.ko\nkernel/drivers/virtio/virtio_anchor.ko\n",
            )
            .with_softdeps(
                "# comment\nsoftdep libcrc32c pre: crc32c\nsoftdep btrfs pre: crypto-crc32c\n",
            )
    }

    fn position(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == name)
            .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    }

    #[test]
    fn stage1_modules_load_after_their_dependencies() {
        let order = db().load_order(STAGE1_MODULES).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/char/virtio_console.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/fs/erofs/erofs.ko",
                "kernel/fs/overlayfs/overlay.ko",
            ]
        );
        // The property that matters, independent of the exact order.
        let db = db();
        for module in &order {
            for dep in &db.deps[module] {
                assert!(
                    order.iter().position(|p| p == dep) < order.iter().position(|p| p == module)
                );
            }
        }
        assert!(position(&order, "virtio_ring") < position(&order, "virtio"));
        assert!(position(&order, "libcrc32c") < position(&order, "erofs"));
    }

    #[test]
    fn names_are_normalized_and_builtins_skipped() {
        let order = db()
            .load_order(&[
                "virtio-rng",
                "crc32c_generic",
                "virtio_anchor",
                "crc32c_intel",
            ])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko",
                "kernel/arch/x86/crypto/crc32c-intel.ko",
            ]
        );
    }

    #[test]
    fn soft_dependencies_that_are_modules_are_loaded_first() {
        let db = ModuleDeps::parse(
            "a.ko: b.ko\nb.ko:\nc.ko:\nd.ko:\n",
            Path::new("modules.dep"),
            "k",
        )
        .unwrap()
        .with_softdeps("softdep a pre: c alias-only post: d\nsoftdep c pre: a\n");
        assert_eq!(
            db.load_order(&["a"]).unwrap(),
            ["c.ko", "b.ko", "a.ko", "d.ko"]
        );
    }

    #[test]
    fn unknown_modules_cycles_and_bad_lines_are_errors() {
        let err = db().load_order(&["nosuchmod"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel module nosuchmod is neither in modules.dep nor built into kernel 6.1.0-test"
        );

        let cyclic =
            ModuleDeps::parse("a.ko: b.ko\nb.ko: a.ko\n", Path::new("m.dep"), "k").unwrap();
        assert!(matches!(
            cyclic.load_order(&["a"]),
            Err(InitramfsError::DependencyCycle { .. })
        ));

        let dangling = ModuleDeps::parse("a.ko: gone.ko\n", Path::new("m.dep"), "k").unwrap();
        assert_eq!(
            dangling.load_order(&["a"]).unwrap_err().to_string(),
            "modules.dep of kernel k: a.ko depends on gone.ko, which has no entry"
        );

        let err =
            ModuleDeps::parse("a.ko:\nnonsense\n", Path::new("/r/modules.dep"), "k").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/r/modules.dep:2: expected `module.ko: dependencies...`, found \"nonsense\""
        );
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/fs/erofs/erofs.ko"), "erofs");
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz"),
            "virtio_rng"
        );
        assert_eq!(module_name("kernel/x/y.ko.zst"), "y");
        assert_eq!(module_name("virtio-pci"), "virtio_pci");
    }

    /// A minimal static x86-64 ELF header with one PT_LOAD (or PT_INTERP)
    /// program header.
    fn elf(program_type: u32) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[18..20].copy_from_slice(&62u16.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&program_type.to_le_bytes());
        e
    }

    #[test]
    fn static_elf_check() {
        assert_eq!(check_static_elf(&elf(1)), Ok(()));
        assert_eq!(check_static_elf(&elf(3)), Err("it is dynamically linked"));
        assert_eq!(check_static_elf(b"#!/bin/sh\n"), Err("not an ELF file"));
    }

    /// Writes a fake rootfs with merged-/usr links, one kernel, busybox and
    /// the modules of [`MODULES_DEP`] (one of them xz-compressed).
    fn fake_rootfs(dir: &Path) {
        let kver = "6.1.0-test";
        for d in ["usr/bin", "usr/lib", "boot"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", dir.join("lib")).unwrap();
        fs::write(dir.join("boot").join(format!("vmlinuz-{kver}")), b"kernel").unwrap();
        fs::write(dir.join("usr/bin/busybox"), elf(1)).unwrap();
        let moddir = dir.join("usr/lib/modules").join(kver);
        let mut dep = String::new();
        for line in MODULES_DEP.lines() {
            let (path, deps) = line.split_once(':').unwrap();
            let (path, deps) = (
                path.replace("virtio_ring.ko", "virtio_ring.ko.xz"),
                deps.replace("virtio_ring.ko", "virtio_ring.ko.xz"),
            );
            let file = moddir.join(&path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            let body = format!("module {}", module_name(&path)).into_bytes();
            if path.ends_with(".xz") {
                let mut xz = Vec::new();
                lzma_rs::xz_compress(&mut io::Cursor::new(body), &mut xz).unwrap();
                fs::write(&file, xz).unwrap();
            } else {
                fs::write(&file, body).unwrap();
            }
            dep.push_str(&format!("{path}:{deps}\n"));
        }
        fs::write(moddir.join("modules.dep"), dep).unwrap();
        fs::write(
            moddir.join("modules.builtin"),
            "kernel/crypto/crc32c_generic.ko\n",
        )
        .unwrap();
    }

    #[test]
    fn initramfs_from_a_fake_rootfs_is_complete_and_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fake_rootfs(&root);
        let opts = InitramfsOptions {
            epoch: 1_700_000_000,
            ..InitramfsOptions::default()
        };
        let (a, b) = (tmp.path().join("a.cpio"), tmp.path().join("b.cpio"));
        let stage1 = build_initramfs(&root, &a, &opts).unwrap();
        build_initramfs(&root, &b, &opts).unwrap();
        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes, fs::read(&b).unwrap(), "two builds differ");

        assert_eq!(stage1.kernel_version, "6.1.0-test");
        assert_eq!(
            stage1.modules[0], "kernel/drivers/virtio/virtio_ring.ko",
            "decompressed name"
        );
        let entries = parse(&bytes);
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(
            get("lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_ring.ko").data,
            b"module virtio_ring"
        );
        assert_eq!(get("bin/busybox").data, elf(1));
        assert_eq!(get("bin/switch_root").data, b"busybox");
        assert_eq!(get("dev/console").rdev, (5, 1));
        let init = String::from_utf8(get("init").data.clone()).unwrap();
        assert!(init.contains("kver='6.1.0-test'"));
        assert!(init.contains(&format!("modules='{}'", stage1.modules.join(" "))));
        assert!(
            !init.contains("@KVER@") && !init.contains("@MODULES@"),
            "unreplaced placeholder"
        );
        assert!(entries
            .iter()
            .all(|e| e.mtime == 1_700_000_000 && e.uid == 0 && e.gid == 0));

        let copied = tmp.path().join("vmlinuz");
        let kernel = copy_kernel(&root, &copied).unwrap();
        assert_eq!(kernel.version, "6.1.0-test");
        assert_eq!(fs::read(copied).unwrap(), b"kernel");
    }

    #[test]
    fn kernel_errors_name_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("boot")).unwrap();
        let err = find_kernel(tmp.path()).unwrap_err();
        assert!(matches!(err, InitramfsError::NoKernel { .. }), "{err}");
        assert!(err.to_string().contains("linux-image-cloud-amd64"));
        fs::write(tmp.path().join("boot/vmlinuz-6.1.0-1"), b"").unwrap();
        fs::write(tmp.path().join("boot/vmlinuz-6.1.0-2"), b"").unwrap();
        let err = find_kernel(tmp.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "several kernels in rootfs {} (6.1.0-1, 6.1.0-2): keep exactly one kernel package",
                tmp.path().display()
            )
        );
    }

    #[test]
    fn dynamic_busybox_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        fake_rootfs(tmp.path());
        fs::write(tmp.path().join("usr/bin/busybox"), elf(3)).unwrap();
        let err = build_initramfs(
            tmp.path(),
            &tmp.path().join("out"),
            &InitramfsOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc", root.join("usr/escape")).unwrap();
        assert_eq!(
            resolve_in_root(root, "/lib/modules"),
            root.join("usr/lib/modules")
        );
        assert_eq!(
            resolve_in_root(root, "/usr/escape/passwd"),
            root.join("etc/passwd")
        );
    }

    #[test]
    fn console_markers_match_the_script() {
        let init = render_init("k", &[]);
        assert!(init.contains(r#"echo "testbed-stage1: $*""#));
        assert!(init.contains(r#"say "FAILED at step '$step': $*""#));
        assert_eq!(FAILURE_MARKER, format!("{CONSOLE_PREFIX}FAILED at step "));
        assert!(
            KERNEL_CMDLINE.contains("testbed.root=/dev/vda") && init.contains("root=/dev/vda\n")
        );
    }

    /// The init script must at least parse; `sh -n` is dash on Debian, which
    /// is close enough to busybox ash for syntax.
    #[test]
    fn init_script_parses() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("init");
        fs::write(
            &script,
            render_init("6.1.0-test", &["kernel/a.ko".to_string()]),
        )
        .unwrap();
        let status = std::process::Command::new("sh")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success());
    }
}
