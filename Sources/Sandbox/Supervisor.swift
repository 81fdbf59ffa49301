import CJail
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Watches one running jail: drains its output so it never blocks, enforces
/// the wall-clock and output limits, and turns its end into an `ExecResult`.
///
/// One poll loop over the stdout and stderr pipes, a pidfd of the jail's
/// init and a signalfd for SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to us (which
/// kill the jail, so an interrupted `sbx` leaves nothing behind).
struct Supervisor {
    let jailPID: pid_t
    let stdoutFD: Int32
    let stderrFD: Int32
    let statusFD: Int32
    let limits: Profile.Limits
    let cgroup: Cgroup
    let start: UInt64
    var stdoutCapture: OutputCapture
    var stderrCapture: OutputCapture

    init(jailPID: pid_t, stdoutFD: Int32, stderrFD: Int32, statusFD: Int32, limits: Profile.Limits,
         stdoutSink: Int32?, stderrSink: Int32?, cgroup: Cgroup, start: UInt64) {
        self.jailPID = jailPID
        self.stdoutFD = stdoutFD
        self.stderrFD = stderrFD
        self.statusFD = statusFD
        self.limits = limits
        self.cgroup = cgroup
        self.start = start
        stdoutCapture = OutputCapture(cap: limits.maxOutputBytes, sinkFD: stdoutSink)
        stderrCapture = OutputCapture(cap: limits.maxOutputBytes, sinkFD: stderrSink)
    }

    enum Kill { case timeout, outputLimit, interrupted(Int32) }

    struct Outcome {
        var result: ExecResult
        /// Whether sbx-init reported the command's status (false: pid 1 died first).
        var commandReported: Bool
    }

    mutating func run() throws(SandboxError) -> Outcome {
        let pidfd = cjail_pidfd_open(jailPID)
        guard pidfd >= 0 else {
            let e = Errno(rawValue: errno)
            kill(jailPID, SIGKILL)
            var s: Int32 = 0
            waitpid(jailPID, &s, __WALL)
            throw .system(call: "pidfd_open", errno: e)
        }
        defer { close(pidfd) }
        let previouslyBlocked = cjail_block_termination_signals()
        let sigfd = cjail_signalfd_for_termination()
        defer {
            if sigfd >= 0 { close(sigfd) }
            cjail_restore_termination_signals(previouslyBlocked)
        }

        let deadline = start + UInt64(limits.timeoutSeconds * 1e9)
        var killedFor: Kill? = nil
        var outOpen = true, errOpen = true, exited = false
        var buffer = [UInt8](repeating: 0, count: 1 << 16)

        func killJail() {
            _ = cjail_pidfd_send_signal(pidfd, SIGKILL)
        }

        while outOpen || errOpen || !exited {
            var fds = [
                pollfd(fd: outOpen ? stdoutFD : -1, events: Int16(POLLIN), revents: 0),
                pollfd(fd: errOpen ? stderrFD : -1, events: Int16(POLLIN), revents: 0),
                pollfd(fd: exited ? -1 : pidfd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: sigfd, events: Int16(POLLIN), revents: 0),
            ]
            var timeoutMs: Int32 = -1
            if killedFor == nil {
                let now = monotonicNanos()
                timeoutMs = now >= deadline ? 0 : Int32(min((deadline - now) / 1_000_000 + 1, 1 << 30))
            }
            let n = poll(&fds, 4, timeoutMs)
            if n < 0 {
                if errno == EINTR { continue }
                killJail()
                throw .system(call: "poll", errno: Errno(rawValue: errno))
            }
            if n == 0 && killedFor == nil && monotonicNanos() >= deadline {
                killedFor = .timeout
                killJail()
                continue
            }
            for (i, isOut) in [(0, true), (1, false)] where fds[i].revents != 0 {
                let fd = isOut ? stdoutFD : stderrFD
                let got = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if got > 0 {
                    buffer.withUnsafeBytes { raw in
                        let chunk = UnsafeRawBufferPointer(rebasing: raw[0..<got])
                        if isOut { stdoutCapture.append(chunk) } else { stderrCapture.append(chunk) }
                    }
                    if killedFor == nil, stdoutCapture.total + stderrCapture.total > limits.outputKillBytes {
                        killedFor = .outputLimit
                        killJail()
                    } else if killedFor == nil, stdoutCapture.sinkClosed || stderrCapture.sinkClosed {
                        killedFor = .interrupted(SIGPIPE)  // what the command would have got in a pipeline
                        killJail()
                    }
                } else if got == 0 || (errno != EINTR && errno != EAGAIN) {
                    if isOut { outOpen = false } else { errOpen = false }
                }
            }
            if fds[2].revents != 0 { exited = true }
            if fds[3].revents != 0 {
                let sig = cjail_sigset_termination_read(sigfd)
                if sig > 0 && killedFor == nil {
                    killedFor = .interrupted(Int32(sig))
                    killJail()
                }
            }
        }

        var waitStatus: Int32 = 0
        var usage = rusage()
        // Reaping pid 1 means its pid namespace is empty: nothing is left in the cgroup to kill.
        while wait4(jailPID, &waitStatus, __WALL, &usage) < 0 && errno == EINTR {}
        stdoutCapture.finish()
        stderrCapture.finish()

        var commandStatus: Int32 = 0
        let statusBytes = withUnsafeMutableBytes(of: &commandStatus) { read(statusFD, $0.baseAddress, 4) }
        let cpuMs = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1000
        let oomKills = cgroup.oomKills()

        var reason: ExitReason
        var exitCode: Int32
        var signal: Int32? = nil
        let status = statusBytes == 4 ? commandStatus : waitStatus
        if cjail_wifsignaled(status) != 0 {
            signal = cjail_wtermsig(status)
            exitCode = 128 + signal!
            reason = .signaled
        } else {
            exitCode = cjail_wexitstatus(status)
            reason = .exited
        }
        switch killedFor {
        case .timeout?:
            reason = .timeout
            exitCode = 124
            signal = SIGKILL
        case .outputLimit?:
            reason = .outputLimit
            exitCode = 128 + SIGKILL
            signal = SIGKILL
        case .interrupted(let sig)?:
            reason = .signaled
            exitCode = 128 + sig
            signal = sig
        case nil:
            if oomKills > 0 && !(reason == .exited && exitCode == 0) { reason = .oom }
        }

        return Outcome(result: ExecResult(
            exitCode: exitCode, signal: signal, reason: reason,
            stdout: stdoutCapture.result(), stderr: stderrCapture.result(),
            stdoutTruncatedBytes: stdoutCapture.truncatedBytes, stderrTruncatedBytes: stderrCapture.truncatedBytes,
            durationMs: Double(monotonicNanos() - start) / 1e6,
            peakMemoryBytes: cgroup.peakMemoryBytes(), cpuMs: cpuMs, setupError: nil), commandReported: statusBytes == 4)
    }
}
