//! Booting an initramfs under QEMU and reading what its init script reports.
//!
//! The init script (written here from a [`Scenario`]) runs each step as a shell script, then
//! reports on the second serial port (`ttyS1`, which the kernel does not write to) one line per
//! fact, each starting with [`TAG`]:
//!
//! ```text
//! KMMVM step <name>
//! KMMVM out <a line the step printed (stdout and stderr)>
//! KMMVM exit <exit status>
//! KMMVM term <a line of the termination message file, if the step left one>
//! KMMVM module <a line of /proc/modules>
//! KMMVM dmesg <a kernel log line written during the step>
//! KMMVM file <path>\t<first line>        (every file under each watched directory)
//! KMMVM param <module>/<name>\t<value>   (/sys/module/<module>/parameters/<name>)
//! KMMVM fwclass <value>                  (/sys/module/firmware_class/parameters/path)
//! KMMVM end
//! KMMVM done                             (after the last step, before powering off)
//! ```
//!
//! The kernel's own console (`ttyS0`) is kept for error messages only.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{initramfs::Initramfs, kernel::Kernel};

/// Prefix of every result line.
pub const TAG: &str = "KMMVM";

/// What a VM does: steps run in order by its init script, and what is reported after each.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    /// Extra kernel command line arguments (e.g. `module.sig_enforce=1`).
    pub kernel_args: Vec<String>,
    /// Modules whose `/sys/module/<name>/parameters/*` are reported after each step.
    pub watch_modules: Vec<String>,
    /// Directories whose files (path and first line) are reported after each step.
    pub watch_dirs: Vec<String>,
    /// A file a step may leave its termination message in (as a pod's `/dev/termination-log`);
    /// reported and removed after each step.
    pub termination_log: Option<String>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// One step: a shell script run by busybox `sh` in a subshell.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub script: String,
}

impl Scenario {
    /// Adds a step.
    pub fn step(mut self, name: &str, script: impl Into<String>) -> Self {
        self.steps.push(Step {
            name: name.to_owned(),
            script: script.into(),
        });
        self
    }

    /// The `/init` script and the step scripts it runs, as (path, contents).
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        let mut init = String::from(INIT_HEAD);
        for (i, step) in self.steps.iter().enumerate() {
            let path = format!("/kmmvm/steps/{i:02}.sh");
            files.push((path.clone(), format!("set -u\n{}\n", step.script)));
            let _ = writeln!(init, "r step {}", shell_word(&step.name));
            let _ = writeln!(init, "sh {path} >/kmmvm/out 2>&1; rc=$?");
            // `echo` ends a last line printed without a newline; the empty line is ignored.
            init.push_str("sed \"s/^/$T out /\" /kmmvm/out >&3; echo >&3\nr exit \"$rc\"\n");
            if let Some(term) = &self.termination_log {
                let term = shell_word(term);
                let _ = writeln!(
                    init,
                    "if [ -f {term} ]; then sed \"s/^/$T term /\" {term} >&3; echo >&3; rm -f {term}; fi"
                );
            }
            init.push_str("sed \"s/^/$T module /\" /proc/modules >&3\n");
            init.push_str("dmesg -c | sed \"s/^/$T dmesg /\" >&3\n");
            for dir in &self.watch_dirs {
                let _ = writeln!(
                    init,
                    "if [ -d {dir} ]; then find {dir} -type f | sort | while read -r f; do \
                     printf '%s file %s\\t%s\\n' \"$T\" \"$f\" \"$(head -n 1 \"$f\")\" >&3; done; fi",
                    dir = shell_word(dir)
                );
            }
            for module in &self.watch_modules {
                let _ = writeln!(
                    init,
                    "for p in /sys/module/{m}/parameters/*; do [ -f \"$p\" ] && \
                     printf '%s param %s/%s\\t%s\\n' \"$T\" {m} \"${{p##*/}}\" \"$(cat \"$p\")\" >&3; done",
                    m = shell_word(module)
                );
            }
            init.push_str("r fwclass \"$(cat /sys/module/firmware_class/parameters/path)\"\nr end\n");
        }
        init.push_str(INIT_TAIL);
        files.push(("/init".to_owned(), init));
        files
    }
}

const INIT_HEAD: &str = r#"#!/bin/busybox sh
# Written by tests/vm (kmm-vm-tests). Results go to ttyS1, one tagged line each.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bbin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/bbin
export HOME=/root
T=KMMVM
exec 3>/dev/ttyS1
r() { echo "$T $*" >&3; }
dmesg -c >/dev/null
"#;

const INIT_TAIL: &str = r#"r done
exec 3>&-
sync
poweroff -f
"#;

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A line of `/proc/modules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    pub name: String,
    pub refcount: u32,
    /// Modules using this one (`-` parsed as none).
    pub used_by: Vec<String>,
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
}

impl LoadedModule {
    fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        let name = parts.next()?.to_owned();
        let _size = parts.next()?;
        let refcount = parts.next()?.parse().ok()?;
        let used_by = parts
            .next()?
            .split(',')
            .filter(|s| !s.is_empty() && *s != "-")
            .map(str::to_owned)
            .collect();
        let state = parts.next()?.to_owned();
        Some(Self {
            name,
            refcount,
            used_by,
            state,
        })
    }
}

/// What was reported after one step.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    pub name: String,
    /// Exit status of the step's script (`None` if the report was cut short).
    pub exit: Option<i32>,
    /// What the step printed.
    pub output: Vec<String>,
    /// The termination message file's lines, if the step left one.
    pub termination: Option<Vec<String>>,
    /// `/proc/modules` after the step, newest first (as the kernel lists them).
    pub modules: Vec<LoadedModule>,
    /// Kernel log lines written during the step, without their timestamps.
    pub dmesg: Vec<String>,
    /// Files under the watched directories after the step: path to first line.
    pub files: BTreeMap<String, String>,
    /// Parameters of the watched modules: `<module>/<name>` to value.
    pub params: BTreeMap<String, String>,
    /// The kernel's firmware search path after the step.
    pub firmware_class_path: Option<String>,
}

impl StepResult {
    /// The `/proc/modules` line of a module, if it is loaded.
    pub fn module(&self, name: &str) -> Option<&LoadedModule> {
        self.modules.iter().find(|m| m.name == name)
    }

    /// Whether the module is loaded and live.
    pub fn is_live(&self, name: &str) -> bool {
        self.module(name).is_some_and(|m| m.state == "Live")
    }

    /// Index of the first kernel log line containing `needle`.
    pub fn dmesg_index(&self, needle: &str) -> Option<usize> {
        self.dmesg.iter().position(|l| l.contains(needle))
    }

    /// A watched module parameter.
    pub fn param(&self, module: &str, name: &str) -> Option<&str> {
        self.params.get(&format!("{module}/{name}")).map(String::as_str)
    }

    /// Everything the step printed, one string.
    pub fn output_text(&self) -> String {
        self.output.join("\n")
    }
}

/// Everything a VM reported.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: Vec<StepResult>,
    /// The kernel console (`ttyS0`), for error messages.
    pub console: String,
    /// Wall time from starting QEMU to its exit (reported, never asserted on).
    pub elapsed: Duration,
}

impl Report {
    /// The result of the step named `name`.
    pub fn step(&self, name: &str) -> &StepResult {
        match self.steps.iter().find(|s| s.name == name) {
            Some(step) => step,
            None => panic!("no step {name:?} in the VM report: {:?}", self.steps),
        }
    }
}

/// Parses the result lines; `Ok` only if the init script got to the end (`done`).
pub fn parse_results(text: &str) -> anyhow::Result<Vec<StepResult>> {
    let mut steps: Vec<StepResult> = Vec::new();
    let mut done = false;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let Some(rest) = line.strip_prefix(TAG).and_then(|r| r.strip_prefix(' ')) else {
            continue;
        };
        let (kind, value) = rest.split_once(' ').unwrap_or((rest, ""));
        if kind == "done" {
            done = true;
            continue;
        }
        if kind == "step" {
            steps.push(StepResult {
                name: value.to_owned(),
                ..Default::default()
            });
            continue;
        }
        let Some(step) = steps.last_mut() else {
            bail!("result line before any step: {line}");
        };
        match kind {
            "out" => step.output.push(value.to_owned()),
            "exit" => step.exit = Some(value.trim().parse().context("exit status")?),
            "term" => step
                .termination
                .get_or_insert_with(Vec::new)
                .push(value.to_owned()),
            "module" => step.modules.extend(LoadedModule::parse(value)),
            "dmesg" => step.dmesg.push(strip_timestamp(value).to_owned()),
            "file" => {
                let (path, first) = value.split_once('\t').unwrap_or((value, ""));
                step.files.insert(path.to_owned(), first.to_owned());
            }
            "param" => {
                let (key, v) = value.split_once('\t').unwrap_or((value, ""));
                step.params.insert(key.to_owned(), v.to_owned());
            }
            "fwclass" => step.firmware_class_path = Some(value.to_owned()),
            "end" => {}
            other => bail!("unknown result line kind {other:?}: {line}"),
        }
    }
    if !done {
        bail!(
            "the VM did not finish its steps (last step: {:?})",
            steps.last().map(|s| &s.name)
        );
    }
    // A termination message file written without a final newline ends with an empty line.
    for step in &mut steps {
        if let Some(term) = &mut step.termination
            && term.last().is_some_and(String::is_empty)
        {
            term.pop();
        }
    }
    Ok(steps)
}

fn strip_timestamp(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

/// At most this many VMs run at once in one test process (the machines have two cores).
const MAX_VMS: usize = 2;
static RUNNING: Mutex<usize> = Mutex::new(0);
static SLOT_FREE: Condvar = Condvar::new();

struct Slot;

impl Slot {
    fn take() -> Self {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= MAX_VMS {
            running = SLOT_FREE.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        SLOT_FREE.notify_one();
    }
}

/// Boots `kernel` with `initramfs` plus the scenario's init script, waits for it to power off
/// (killing it after `timeout`, a guard against a hung guest, not a measurement) and parses its
/// report.
pub fn run(
    kernel: &Kernel,
    initramfs: &Initramfs,
    scenario: &Scenario,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("kmm-vm-")
        .tempdir()
        .context("creating a temporary directory")?;
    let mut fs = initramfs.clone();
    for (path, contents) in scenario.files() {
        fs.bytes(&path, contents, 0o755);
    }
    let cpio = dir.path().join("initramfs.cpio");
    fs.write(&cpio)?;
    let console = dir.path().join("console.log");
    let results = dir.path().join("results.log");
    let mut append = String::from("console=ttyS0 loglevel=4 panic=-1 rdinit=/init");
    for arg in &scenario.kernel_args {
        append.push(' ');
        append.push_str(arg);
    }
    let _slot = Slot::take();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&cpio)
        .arg("-append")
        .arg(&append)
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (scripts/test-deps installs qemu-system-x86)")?;
    let started = Instant::now();
    let deadline = started + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let qemu_output = child.wait_with_output().ok();
    let console_text = read_lossy(&console);
    let results_text = read_lossy(&results);
    let context = || {
        let mut text = String::new();
        if let Some(out) = &qemu_output {
            text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        let tail: Vec<&str> = console_text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "qemu: {text}\n--- kernel console (last lines) ---\n{}\n--- results ---\n{results_text}",
            tail.join("\n")
        )
    };
    match status {
        None => bail!("the VM did not power off within {timeout:?}\n{}", context()),
        Some(status) if !status.success() => bail!("qemu exited with {status}\n{}", context()),
        Some(_) => {}
    }
    let steps = parse_results(&results_text).with_context(context)?;
    eprintln!(
        "VM: {} MiB initramfs, QEMU ran {:.1} s",
        fs::metadata(&cpio).map(|m| m.len() >> 20).unwrap_or(0),
        elapsed.as_secs_f64()
    );
    Ok(Report {
        steps,
        console: console_text,
        elapsed,
    })
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse_into_steps() {
        let text = "junk\r\nKMMVM step load\r\nKMMVM out insmod: can't insert 'x.ko': Key was rejected by service\r\n\
                    KMMVM exit 1\r\nKMMVM term reason one\r\nKMMVM term \r\n\
                    KMMVM module dummy 16384 0 - Live 0xffffffffc04cc000\r\n\
                    KMMVM module b 16384 1 a, Live 0x0 (OE)\r\n\
                    KMMVM dmesg [    2.106696] Loading of unsigned module is rejected\r\n\
                    KMMVM file /var/lib/firmware/kmm-vm/fw.bin\tkmm-vm firmware v1\r\n\
                    KMMVM param kmm_vm_params/greeting\thello\r\n\
                    KMMVM fwclass /var/lib/firmware\r\nKMMVM end\r\nKMMVM done\r\n";
        let steps = parse_results(text).unwrap();
        assert_eq!(steps.len(), 1);
        let s = &steps[0];
        assert_eq!(s.name, "load");
        assert_eq!(s.exit, Some(1));
        assert_eq!(s.termination.as_deref(), Some(&["reason one".to_owned()][..]));
        assert!(s.is_live("dummy"));
        assert_eq!(s.module("b").unwrap().used_by, ["a"]);
        assert_eq!(s.dmesg, ["Loading of unsigned module is rejected"]);
        assert_eq!(s.files["/var/lib/firmware/kmm-vm/fw.bin"], "kmm-vm firmware v1");
        assert_eq!(s.param("kmm_vm_params", "greeting"), Some("hello"));
        assert_eq!(s.firmware_class_path.as_deref(), Some("/var/lib/firmware"));
    }

    #[test]
    fn a_report_without_done_is_an_error() {
        assert!(parse_results("KMMVM step a\nKMMVM exit 0\n").is_err());
    }

    #[test]
    fn init_script_runs_every_step_and_reports_watches() {
        let scenario = Scenario {
            watch_modules: vec!["m".into()],
            watch_dirs: vec!["/var/lib/firmware".into()],
            termination_log: Some("/dev/termination-log".into()),
            ..Default::default()
        }
        .step("one", "echo 1")
        .step("two words", "echo 2");
        let files = scenario.files();
        assert_eq!(
            files[0],
            ("/kmmvm/steps/00.sh".to_owned(), "set -u\necho 1\n".to_owned())
        );
        let init = &files.last().unwrap().1;
        assert!(init.contains("r step one\n"));
        assert!(init.contains("r step 'two words'\n"));
        assert!(init.contains("/sys/module/m/parameters/*"));
        assert!(init.contains("find /var/lib/firmware -type f"));
        assert!(init.ends_with("poweroff -f\n"));
    }
}
