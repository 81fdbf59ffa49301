// The seccomp deny list: each test makes the raw syscalls from python's ctypes
// inside the jail and expects EPERM (ENOSYS for clone3, SIGSYS for foreign
// ABIs). Where it is harmless, the same probe runs on the host first and gets
// a different answer, so the EPERM is the filter's doing and not the kernel's.
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class SeccompTests: SbxTestCase {

    /// Raw syscall probes (x86_64 numbers). Arguments are chosen so an
    /// unfiltered call fails harmlessly (ENOENT, EBADF, EFAULT, ...) or succeeds
    /// without side effects. Prints {name: errno or 0}.
    static let probeScript = #"""
    import ctypes, os, sys, json
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def sc(nr, *args):
        a = [ctypes.c_long(x) if isinstance(x, int) else x for x in args]
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(nr), *a)
        return 0 if r >= 0 else ctypes.get_errno()
    N = None
    AT_FDCWD = -100
    ne = b"/nonexistent-sbx-e2e-probe"
    me = os.getpid()
    probes = {
        "mount": (165, b"none", ne, b"tmpfs", 0, N),
        "umount2": (166, ne, 0),
        "pivot_root": (155, ne, ne),
        "chroot": (161, ne),
        "open_tree": (428, AT_FDCWD, ne, 0),
        "move_mount": (429, -1, ne, -1, ne, 0),
        "fsopen": (430, b"nonexistentfs", 0),
        "fsconfig": (431, -1, 0, N, N, 0),
        "fsmount": (432, -1, 0, 0),
        "fspick": (433, AT_FDCWD, ne, 0),
        "mount_setattr": (442, -1, N, 0, N, 0),
        "unshare(0)": (272, 0),
        "unshare(CLONE_NEWUSER)": (272, 0x10000000),
        "setns": (308, -1, 0),
        "clone3": (435, N, 0),
        "io_uring_setup": (425, 1, N),
        "io_uring_enter": (426, -1, 0, 0, 0, N, 0),
        "io_uring_register": (427, -1, 0, N, 0),
        "ptrace": (101, 12, 0x7ffffff0, 0, 0),
        "process_vm_readv": (310, me, N, 0, N, 0, 0),
        "process_vm_writev": (311, me, N, 0, N, 0, 0),
        "pidfd_getfd": (438, -1, 0, 0),
        "kcmp": (312, me, me, 0, 0, 0),
        "keyctl": (250, 0, -2, 0),
        "add_key": (248, b"nonexistent-type", b"x", N, 0, -2),
        "request_key": (249, b"user", b"sbx-e2e-nonexistent-key", N, 0),
        "bpf": (321, -1, N, 0),
        "perf_event_open": (298, N, 0, -1, -1, 0),
        "userfaultfd": (323, 1),
        "name_to_handle_at": (303, AT_FDCWD, ne, N, N, 0),
        "open_by_handle_at": (304, -1, N, 0),
        "syslog": (103, 10, N, 0),
        # Never run these on the host.
        "acct": (163, N),
        "swapon": (167, ne, 0),
        "swapoff": (168, ne),
        "kexec_load": (246, 0, 0, N, 0),
        "kexec_file_load": (320, -1, -1, 0, N, 0),
        "init_module": (175, N, 0, b""),
        "finit_module": (313, -1, b"", 0),
        "delete_module": (176, b"sbx_e2e_nonexistent", 0),
        "reboot": (169, 0, 0, 0, N),
        "settimeofday": (164, N, N),
        "clock_settime": (227, 0, N),
        "quotactl": (179, 0, N, 0, N),
        "vhangup": (153,),
        # The rest of Docker's default deny list (harmless on the host with these arguments).
        "mbind": (237, N, 0, 0, N, 0, 0),
        "set_mempolicy": (238, 0, N, 0),
        "get_mempolicy": (239, N, N, 0, N, 0),
        "move_pages": (279, 0, 0, N, N, N, 0),
        "iopl": (172, 0),
        "ioperm": (173, 0, 0, 0),
        "lookup_dcookie": (212, 0, N, 0),
        "uselib": (134, N),
        "ustat": (136, 0, N),
        "sysfs": (139, 3),
        "clock_adjtime": (305, 0, N),
        "fanotify_init": (300, 0, 0),
        "_sysctl": (156, N),
        "create_module": (174, N, 0),
        "get_kernel_syms": (177, N),
        "query_module": (178, N, 0, N, 0, N),
        "nfsservctl": (180, 0, N, N),
        "process_madvise": (440, -1, N, 0, 0, 0),
        "quotactl_fd": (443, -1, 0, 0, N),
    }
    out = {}
    names = sys.argv[1:]
    if names and names[0] == "--jail":
        names = names[1:]
        # Some probes (reboot, kexec, swapoff, vhangup, ...) must never run outside a jail.
        if os.readlink("/proc/self/ns/pid") == HOST_PIDNS or os.getpid() > 1000:
            print("REFUSING: not inside an sbx jail", file=sys.stderr); sys.exit(3)
    for name in names:
        out[name] = sc(*probes[name])
    print(json.dumps(out))
    """#

    /// Names safe to call on the host as root (they fail or are side-effect free).
    static let hostSafe: Set<String> = [
        "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
        "mount_setattr", "unshare(0)", "setns", "clone3", "io_uring_setup", "io_uring_enter", "io_uring_register", "ptrace",
        "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "keyctl", "add_key", "request_key", "bpf",
        "perf_event_open", "userfaultfd", "name_to_handle_at", "open_by_handle_at", "syslog",
        "mbind", "set_mempolicy", "get_mempolicy", "move_pages", "iopl", "ioperm", "lookup_dcookie", "uselib", "ustat",
        "sysfs", "clock_adjtime", "fanotify_init", "_sysctl", "create_module", "get_kernel_syms", "query_module",
        "nfsservctl", "process_madvise", "quotactl_fd",
    ]

    private func probe(_ names: [String], onHost: Bool) throws -> [String: Int] {
        let r = onHost
            ? try Harness.hostPython(Self.probeScript, names)
            : try jailPython(Self.probeScript.replacingOccurrences(of: "HOST_PIDNS", with: "\"\(Harness.hostPidNamespace)\""), ["--jail"] + names)
        XCTAssertEqual(r.status, 0, "probe failed (\(onHost ? "host" : "jail")): \(r.err)")
        let obj = try parseObject(r.out)
        var out: [String: Int] = [:]
        for (k, v) in obj { out[k] = (v as? NSNumber)?.intValue }
        XCTAssertEqual(Set(out.keys), Set(names))
        return out
    }

    /// Every probe fails with `expected` in the jail; the host-safe ones get another answer on the host.
    private func assertDenied(_ names: [String], expected: Int32 = EPERM, file: StaticString = #filePath, line: UInt = #line) throws {
        try requireX86_64()
        let hostNames = names.filter { Self.hostSafe.contains($0) }
        if !hostNames.isEmpty {
            let host = try probe(hostNames, onHost: true)
            for name in hostNames {
                XCTAssertNotEqual(host[name], Int(expected), "host control for \(name) already gives errno \(expected)", file: file, line: line)
            }
        }
        let jail = try probe(names, onHost: false)
        for name in names {
            XCTAssertEqual(jail[name], Int(expected), "\(name) in the jail: got errno \(String(describing: jail[name]))", file: file, line: line)
        }
    }

    // MARK: - deny list

    func testMountFamilySyscallsFailWithEPERM() throws {
        try assertDenied(["mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
                          "fsmount", "fspick", "mount_setattr"])
    }

    func testMountAndUnshareCommandsFailInsideTheJail() throws {
        let host = try Harness.host("unshare -Ur true && echo unshared")
        XCTAssertEqual(host.out, "unshared\n", "host control: unshare works on the host: \(host.err)")
        let r = try sbxRun([], ["sh", "-c", Harness.shellJailGuard + "unshare -Ur true 2>/dev/null && echo UNSHARED; mount -t tmpfs none /tmp 2>/dev/null && echo MOUNTED; unshare -n true 2>/dev/null && echo NETNS; echo end"])
        XCTAssertEqual(r.out, "end\n")
    }

    func testNamespaceSyscallsFailWithEPERM() throws {
        try assertDenied(["unshare(0)", "unshare(CLONE_NEWUSER)", "setns"])
    }

    func testCloneWithAnyNamespaceFlagFailsWithEPERM() throws {
        try requireX86_64()
        let script = """
        import ctypes, os, json
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        flags = {"NEWNS": 0x20000, "NEWUTS": 0x4000000, "NEWIPC": 0x8000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000,
                 "NEWNET": 0x40000000, "NEWCGROUP": 0x2000000, "NEWUSER|NEWNS": 0x10020000, "plain": 0}
        res = {}
        for name, f in flags.items():
            ctypes.set_errno(0)
            r = libc.syscall(ctypes.c_long(56), ctypes.c_ulong(f | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
            if r == 0:
                os._exit(0)
            if r > 0:
                os.waitpid(r, 0x40000000); res[name] = 0
            else:
                res[name] = ctypes.get_errno()
        print(json.dumps(res))
        """
        // (CLONE_NEWTIME, 0x80, lies in clone's exit-signal byte: only clone3/unshare take it, and both are denied.)
        // Host control: as root each flag works (the child exits at once).
        let host = try parseObject(try Harness.hostPython(script).out)
        for (name, v) in host { XCTAssertEqual((v as? NSNumber)?.intValue, 0, "host clone(\(name))") }
        let r = try jailPython(script)
        XCTAssertEqual(r.status, 0, r.err)
        let jail = try parseObject(r.out)
        XCTAssertEqual(jail.count, 9)
        for (name, v) in jail where name != "plain" {
            XCTAssertEqual((v as? NSNumber)?.intValue, Int(EPERM), "clone(CLONE_\(name)) in the jail")
        }
        XCTAssertEqual(jail.int("plain"), 0, "clone without namespace flags (fork) must keep working")
    }

    func testClone3FailsWithENOSYSAndProcessCreationStillWorks() throws {
        try assertDenied(["clone3"], expected: ENOSYS)
        // libc falls back to clone: fork, threads, subprocesses and shell pipelines work.
        let r = try jailPython("""
            import os, threading, subprocess
            out = []
            t = threading.Thread(target=lambda: out.append("thread")); t.start(); t.join()
            pid = os.fork()
            if pid == 0:
                os._exit(7)
            out.append("fork:%d" % os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            out.append(subprocess.run(["sh", "-c", "echo a | tr a b"], capture_output=True, text=True).stdout.strip())
            print(" ".join(out))
            """)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "thread fork:7 b\n")
    }

    func testIoUringIsBlocked() throws {
        try assertDenied(["io_uring_setup", "io_uring_enter", "io_uring_register"])
    }

    func testProcessInspectionSyscallsAreBlocked() throws {
        try assertDenied(["ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp"])
    }

    func testKeyringSyscallsAreBlocked() throws {
        try assertDenied(["keyctl", "add_key", "request_key"])
    }

    func testBpfPerfAndUserfaultfdAreBlocked() throws {
        try assertDenied(["bpf", "perf_event_open", "userfaultfd"])
    }

    func testHandleBasedOpensAreBlocked() throws {
        try assertDenied(["name_to_handle_at", "open_by_handle_at"])
    }

    func testKernelAdministrationSyscallsAreBlocked() throws {
        // Only syslog is harmless on the host; the others are jail-only.
        try assertDenied(["syslog", "acct", "swapon", "swapoff", "kexec_load", "kexec_file_load", "init_module",
                          "finit_module", "delete_module", "reboot", "settimeofday", "clock_settime", "quotactl", "vhangup"])
    }

    func testRestOfDockersDefaultDenyListIsBlocked() throws {
        try assertDenied(["mbind", "set_mempolicy", "get_mempolicy", "move_pages", "iopl", "ioperm", "lookup_dcookie",
                          "uselib", "ustat", "sysfs", "clock_adjtime", "fanotify_init", "_sysctl", "create_module",
                          "get_kernel_syms", "query_module", "nfsservctl", "process_madvise", "quotactl_fd"])
    }

    // MARK: - ioctl

    func testTerminalInjectionIoctlsAreBlockedOnTheLow32Bits() throws {
        try requireX86_64()
        let script = """
        import ctypes, json, termios
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        c = ctypes.c_char(b"x")
        res = {}
        for name, req in [("TIOCSTI", 0x5412), ("TIOCSTI|high", 0xffffffff00005412), ("TIOCSTI|bit32", 0x100005412),
                          ("TIOCLINUX", 0x541C), ("TIOCLINUX|high", 0xffffffff0000541C), ("TCGETS", termios.TCGETS)]:
            ctypes.set_errno(0)
            r = libc.syscall(ctypes.c_long(16), ctypes.c_long(0), ctypes.c_ulong(req), ctypes.byref(c))
            res[name] = 0 if r >= 0 else ctypes.get_errno()
        print(json.dumps(res))
        """
        // Host control: stdin is /dev/null, so the kernel answers ENOTTY for all of them.
        let host = try parseObject(try Harness.hostPython(script).out)
        for (name, v) in host { XCTAssertEqual((v as? NSNumber)?.intValue, Int(ENOTTY), "host \(name)") }
        let r = try jailPython(script)
        let jail = try parseObject(r.out)
        for name in ["TIOCSTI", "TIOCSTI|high", "TIOCSTI|bit32", "TIOCLINUX", "TIOCLINUX|high"] {
            XCTAssertEqual(jail.int(name), Int(EPERM), "ioctl \(name) in the jail")
        }
        XCTAssertEqual(jail.int("TCGETS"), Int(ENOTTY), "other ioctls still reach the kernel")
    }

    func testTerminalInjectionIntoAnAttachedTerminalIsBlocked() throws {
        try requireX86_64()
        let ws = try makeWorkspace()
        // Runs inside (or on the host): take the terminal on stdin as controlling tty and push a byte into its input.
        try writeFile(ws + "/inject.py", """
            import ctypes, json, os, termios
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            def ioctl(req, arg):
                ctypes.set_errno(0)
                r = libc.syscall(ctypes.c_long(16), ctypes.c_long(0), ctypes.c_ulong(req), arg)
                return 0 if r >= 0 else ctypes.get_errno()
            res = {"isatty": os.isatty(0)}
            try:
                os.setsid()
            except OSError:
                pass
            res["sctty"] = ioctl(termios.TIOCSCTTY, ctypes.c_long(0))
            c = ctypes.c_char(b"Z")
            res["sti"] = ioctl(0x5412, ctypes.byref(c))
            res["sti_high"] = ioctl(0xffffffff00005412, ctypes.byref(c))
            print(json.dumps(res))
            """)
        // Driver on the host: give the command a pty as stdin, then look for injected bytes on the master.
        let driver = """
        import os, pty, subprocess, sys, json, select
        m, s = pty.openpty()
        p = subprocess.run(sys.argv[1:], stdin=s, capture_output=True)
        injected = b""
        while select.select([m], [], [], 0.2)[0]:
            try:
                chunk = os.read(m, 100)
            except OSError:
                break
            if not chunk: break
            injected += chunk
        os.close(s)
        print(json.dumps({"status": p.returncode, "child": p.stdout.decode(), "err": p.stderr.decode(), "injected": injected.decode(errors="replace")}))
        """
        let host = try parseObject(try Harness.hostPython(driver, [Harness.python, ws + "/inject.py"]).out)
        let hostChild = try parseObject(host["child"] as? String ?? "")
        XCTAssertEqual(hostChild.int("sti"), 0, "host control: TIOCSTI works on the host (dev.tty.legacy_tiocsti=1?) \(host)")
        XCTAssertTrue((host["injected"] as? String ?? "").contains("Z"), "host control: injected byte is echoed: \(host)")

        let jail = try parseObject(try Harness.hostPython(driver, [sbx, "run", "--workspace", ws, "--", "python3", "inject.py"]).out)
        XCTAssertEqual(jail.int("status"), 0, "\(jail)")
        let child = try parseObject(jail["child"] as? String ?? "")
        XCTAssertEqual(child["isatty"] as? Bool, true, "the jail got the terminal as stdin")
        XCTAssertEqual(child.int("sti"), Int(EPERM))
        XCTAssertEqual(child.int("sti_high"), Int(EPERM))
        XCTAssertFalse((jail["injected"] as? String ?? "").contains("Z"), "a byte was injected into the terminal: \(jail)")
    }

    // MARK: - personality

    func testPersonalityAllowsOnlyDockersValues() throws {
        try requireX86_64()
        let script = """
        import ctypes, json, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        res = {}
        for v in [int(a, 0) for a in sys.argv[1:]]:
            ctypes.set_errno(0)
            r = libc.syscall(ctypes.c_long(135), ctypes.c_ulong(v))
            res[hex(v)] = 0 if r >= 0 else ctypes.get_errno()
            libc.syscall(ctypes.c_long(135), ctypes.c_ulong(0))
        print(json.dumps(res))
        """
        let allowed: [UInt64] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, PER_LINUX32_3GB, bit 31 alone, all-but-one, ADDR_NO_RANDOMIZE in the
        // low half of a 64-bit value, PER_SVR4-ish, ADDR_COMPAT_LAYOUT, UNAME26|ADDR_NO_RANDOMIZE.
        let denied: [UInt64] = [0x40000, 0x400000, 0x800_0008, 0x8000_0000, 0xffff_fffe, 0x1_0004_0000, 0x1, 0x200000, 0x60000]
        let args = (allowed + denied).map { "0x" + String($0, radix: 16) }
        let host = try parseObject(try Harness.hostPython(script, args).out)
        for (k, v) in host { XCTAssertEqual((v as? NSNumber)?.intValue, 0, "host control: personality(\(k))") }
        let jail = try parseObject(try jailPython(script, args).out)
        for v in allowed { XCTAssertEqual(jail.int("0x" + String(v, radix: 16)), 0, "personality(0x\(String(v, radix: 16))) must be allowed") }
        for v in denied { XCTAssertEqual(jail.int("0x" + String(v, radix: 16)), Int(EPERM), "personality(0x\(String(v, radix: 16))) must be denied") }
    }

    // MARK: - foreign syscall ABIs

    func testX32SyscallABIKillsTheProcess() throws {
        try requireX86_64()
        let script = """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        r = libc.syscall(ctypes.c_long(0x40000000 | 39))
        print("survived", r, ctypes.get_errno())
        """
        let host = try Harness.hostPython(script)
        XCTAssertEqual(host.status, 0, "host control: an x32 syscall does not kill a host process")
        XCTAssertTrue(host.out.hasPrefix("survived"))
        let (r, j) = try sbxJSON([], ["python3", "-c", script])
        XCTAssertEqual(r.status, 128 + 31, "x32 syscall must die of SIGSYS: \(j.raw)")
        XCTAssertEqual(j.signal, 31)
        XCTAssertEqual(j.reason, "signaled")
        XCTAssertFalse(j.stdout.contains("survived"))

        // The whole process dies, not just the thread that made the call.
        let threaded = """
        import ctypes, threading, time, sys
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        t = threading.Thread(target=lambda: libc.syscall(ctypes.c_long(0x40000000 | 165), 0, 0, 0, 0, 0))  # x32 mount
        t.start(); t.join(); time.sleep(0.5)
        print("main thread survived", flush=True)
        """
        let (tr, tj) = try sbxJSON([], ["python3", "-c", threaded])
        XCTAssertEqual(tr.status, 128 + 31, "x32 syscall from a thread must kill the process: \(tj.raw)")
        XCTAssertFalse(tj.stdout.contains("survived"))
    }

    func testI386Int80SyscallKillsTheProcess() throws {
        try requireX86_64()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/cc") else { throw XCTSkip("no C compiler (/usr/bin/cc) to build the int 0x80 probe") }
        let ws = try makeWorkspace()
        try writeFile(ws + "/int80.c", """
            #include <stdio.h>
            int main(void) {
                long r;
                __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory"); /* i386 getpid */
                printf("survived %ld\\n", r);
                return 0;
            }
            """)
        let cc = try Harness.run("/usr/bin/cc", ["-O0", "-o", ws + "/int80", ws + "/int80.c"])
        XCTAssertEqual(cc.status, 0, cc.err)
        chown(ws + "/int80", 65534, 65534)
        let host = try Harness.run(ws + "/int80", [])
        XCTAssertEqual(host.status, 0, "host control: int 0x80 works or fails softly on the host")
        XCTAssertTrue(host.out.hasPrefix("survived"))
        let (r, j) = try sbxJSON(["--workspace", ws], ["./int80"])
        XCTAssertEqual(r.status, 128 + 31, "int 0x80 must die of SIGSYS: \(j.raw)")
        XCTAssertEqual(j.signal, 31)
        XCTAssertFalse(j.stdout.contains("survived"))
    }

    func testImportedOCIProfileIsEnforcedOnTopOfTheBuiltInFilter() throws {
        // A Docker/OCI profile that allows everything but mkdir (EACCES): stacked, it must bite,
        // while the built-in deny list still holds (mount stays EPERM).
        let dir = try makeTempDir(owner: nil)
        _ = try writeFile(dir + "/oci.json", """
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
             "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
            """, owner: nil)
        let profile = try makeProfile(extra: ["seccomp": ["import": dir + "/oci.json"]])
        let probe = "mkdir /tmp/d 2>&1; echo mkdir=$?; mount -t tmpfs x /tmp 2>&1; echo mount=$?"
        let plain = try sbxRun([], ["sh", "-c", probe])
        XCTAssertTrue(plain.out.contains("mkdir=0"), "control: mkdir works under the default profile: \(plain.out)")
        let r = try sbxRun(["--profile", profile], ["sh", "-c", probe])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("Permission denied") && r.out.contains("mkdir=1"), "imported rule not applied: \(r.out)")
        XCTAssertFalse(r.out.contains("mount=0"), "built-in filter must still deny mount: \(r.out)")
    }

    func testMalformedOCIProfileIsRefusedNamingTheField() throws {
        let dir = try makeTempDir(owner: nil)
        _ = try writeFile(dir + "/oci.json", #"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, owner: nil)
        let profile = try makeProfile(extra: ["seccomp": ["import": dir + "/oci.json"]])
        let r = try sbxRun(["--profile", profile], ["true"])
        XCTAssertEqual(r.status, 125)
        XCTAssertTrue(r.err.contains("defaultAction"), r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
    }
}
