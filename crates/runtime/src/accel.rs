//! Which accelerator QEMU can use on this host: KVM where it really works,
//! TCG (software emulation) everywhere else.
//!
//! `/dev/kvm` existing, or even opening, is not enough: under some nested
//! or paravirtual hypervisors the device opens fine but the CPU offers no
//! hardware virtualization (no `vmx`/`svm` flag), and ordinary guests then
//! fail to start or crash early. So KVM is chosen only when both hold, and
//! the decision carries a sentence saying why, for `testbed` to show.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// The Tiny Code Generator: software emulation, ~10× slower, works
    /// everywhere.
    Tcg,
}

impl Accel {
    /// The QEMU arguments selecting this accelerator (and the CPU model that
    /// goes with it).
    ///
    /// TCG runs one host thread per vCPU with `thread=multi` (MTTCG), which
    /// is what makes a 2-vCPU guest faster than a 1-vCPU one; `tb-size`
    /// caps its translated-code cache (1 GiB by default, most of an idle
    /// node's host memory). KVM passes the
    /// host CPU through so guests see the real feature set.
    pub fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi,tb-size=32"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// An accelerator name that is neither `kvm` nor `tcg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator \"{0}\": expected kvm or tcg")]
pub struct ParseAccelError(pub String);

impl FromStr for Accel {
    type Err = ParseAccelError;

    fn from_str(s: &str) -> Result<Accel, ParseAccelError> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(ParseAccelError(other.to_string())),
        }
    }
}

/// The outcome of [`detect`]: the accelerator and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// What to use.
    pub accel: Accel,
    /// One sentence on why, e.g. "/dev/kvm is usable but the CPU advertises
    /// neither vmx nor svm (nested or paravirtual KVM)".
    pub reason: String,
}

/// Looks at this host: opens `/dev/kvm` read-write (what QEMU needs) and
/// reads the CPU flags in `/proc/cpuinfo`.
pub fn detect() -> Detection {
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| e.to_string());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    decide(kvm_opens, &cpuinfo)
}

/// The decision behind [`detect`], from its two observations: whether
/// `/dev/kvm` opens read-write (or why not), and `/proc/cpuinfo`'s text.
pub fn decide(kvm_opens: Result<(), String>, cpuinfo: &str) -> Detection {
    let flag = cpu_virt_flag(cpuinfo);
    let (accel, reason) = match (kvm_opens, flag) {
        (Ok(()), Some(flag)) => (
            Accel::Kvm,
            format!("/dev/kvm is usable and the CPU advertises {flag}"),
        ),
        (Ok(()), None) => (
            Accel::Tcg,
            "/dev/kvm is usable but the CPU advertises neither vmx nor svm \
             (nested or paravirtual KVM)"
                .to_string(),
        ),
        (Err(e), Some(flag)) => (
            Accel::Tcg,
            format!(
                "the CPU advertises {flag} but /dev/kvm cannot be opened read-write: {e} \
                 (is the kvm module loaded, and is the user in the kvm group?)"
            ),
        ),
        (Err(e), None) => (
            Accel::Tcg,
            format!(
                "/dev/kvm cannot be opened read-write ({e}) and the CPU advertises \
                 neither vmx nor svm"
            ),
        ),
    };
    Detection { accel, reason }
}

/// `vmx` (Intel VT-x) or `svm` (AMD-V) if a `flags` line of cpuinfo lists
/// it. Flags are whole words: `svm_lock` alone does not count.
fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    cpuinfo
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .flat_map(str::split_whitespace)
        .find_map(|word| match word {
            "vmx" => Some("vmx"),
            "svm" => Some("svm"),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_VMX: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
        flags\t\t: fpu vme de pse tsc msr pae vmx ssse3 hypervisor\n\nprocessor\t: 1\n";
    const WITH_SVM: &str = "processor\t: 0\nflags\t\t: fpu svm_lock svm sse2\n";
    const WITHOUT: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\n\
        flags\t\t: fpu vme svm_lock hypervisor\nbugs\t\t: vmx_bug\n";

    #[test]
    fn kvm_when_the_device_opens_and_the_cpu_has_vmx_or_svm() {
        let d = decide(Ok(()), WITH_VMX);
        assert_eq!(d.accel, Accel::Kvm);
        assert!(d.reason.contains("vmx"), "{}", d.reason);
        let d = decide(Ok(()), WITH_SVM);
        assert_eq!(d.accel, Accel::Kvm);
        assert!(d.reason.contains("svm"), "{}", d.reason);
    }

    #[test]
    fn tcg_when_the_device_opens_but_the_cpu_has_no_flag() {
        let d = decide(Ok(()), WITHOUT);
        assert_eq!(d.accel, Accel::Tcg);
        assert_eq!(
            d.reason,
            "/dev/kvm is usable but the CPU advertises neither vmx nor svm \
             (nested or paravirtual KVM)"
        );
    }

    #[test]
    fn tcg_when_the_device_does_not_open_even_with_the_flag() {
        let d = decide(Err("Permission denied (os error 13)".into()), WITH_VMX);
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("Permission denied"), "{}", d.reason);
        assert!(d.reason.contains("kvm group"), "{}", d.reason);
    }

    #[test]
    fn tcg_when_neither_holds() {
        let d = decide(
            Err("No such file or directory (os error 2)".into()),
            WITHOUT,
        );
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("No such file"), "{}", d.reason);
        assert!(d.reason.contains("neither vmx nor svm"), "{}", d.reason);
    }

    #[test]
    fn flags_are_whole_words_of_flags_lines_only() {
        assert_eq!(cpu_virt_flag(WITHOUT), None);
        assert_eq!(cpu_virt_flag("model name\t: vmx svm\n"), None);
        assert_eq!(cpu_virt_flag(""), None);
    }

    #[test]
    fn names_round_trip_through_display_fromstr_and_serde() {
        for a in [Accel::Kvm, Accel::Tcg] {
            assert_eq!(a.to_string().parse::<Accel>(), Ok(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<Accel>(&json).unwrap(), a);
        }
        assert_eq!(
            "KVM".parse::<Accel>().unwrap_err().to_string(),
            "unknown accelerator \"KVM\": expected kvm or tcg"
        );
    }

    #[test]
    fn qemu_arguments() {
        assert_eq!(
            Accel::Tcg.qemu_args(),
            ["-accel", "tcg,thread=multi,tb-size=32"]
        );
        assert_eq!(Accel::Kvm.qemu_args(), ["-accel", "kvm", "-cpu", "host"]);
    }
}
