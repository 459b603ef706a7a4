//! Child processes that must not outlive kiln.

/// Asks the kernel to SIGTERM the child when the thread that spawned it (a
/// long-lived runtime worker) or the whole process dies, so a killed
/// controller or runner leaves no Packer build or apiserver running on.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}
