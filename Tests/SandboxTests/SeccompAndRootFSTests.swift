import CJail
import XCTest
@testable import Sandbox

final class SeccompCompileTests: XCTestCase {
    func testBuiltInFilterCompilesToBPF() throws {
        let program = try Seccomp.builtIn()
        XCTAssertGreaterThan(program.instructionCount, 50)
        XCTAssertEqual(program.bytes.count % 8, 0)
    }

    func testFilterDeniesTheEscapeSyscallsAndKillsForeignArchitectures() throws {
        let pfc = try Seccomp.builtInPseudoCode()
        for name in ["io_uring_setup", "fsopen", "open_tree", "move_mount", "setns", "unshare", "ptrace", "bpf",
                     "keyctl", "perf_event_open", "userfaultfd", "kexec_load", "init_module", "open_by_handle_at",
                     "chroot", "process_vm_readv", "mount", "clone3", "ioctl"] {
            XCTAssertTrue(pfc.contains("# filter for syscall \"\(name)\""), "no rule for \(name)")
        }
        XCTAssertTrue(pfc.contains("action KILL_PROCESS"), "other architectures must be killed")
        #if arch(x86_64)
        XCTAssertTrue(pfc.contains("0x40000000"), "x32 syscall numbers must be caught")
        #endif
    }

    func testPersonalityFilterIsSmall() {
        XCTAssertEqual(Seccomp.personalityFilter().instructionCount, 8)
        XCTAssertLessThan(try Seccomp.builtIn().instructionCount, 200, "every instruction costs load time at each launch")
    }

    func testUnknownSyscallInProfileDenyListIsAnError() {
        XCTAssertThrowsError(try Seccomp.builtIn(extraDeny: ["definitely_not_a_syscall"]))
    }

    func testOCIProfileImports() throws {
        let path = "/tmp/sbx-oci-\(getpid()).json"
        let text = """
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
             "syscalls": [
               {"names": ["read", "write", "exit_group", "uname"], "action": "SCMP_ACT_ALLOW"},
               {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
               {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}
             ]}
            """
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        defer { unlink(path) }
        XCTAssertGreaterThan(try Seccomp.importOCI(file: path).instructionCount, 4)

        FileManager.default.createFile(atPath: path, contents: Data(#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#.utf8))
        XCTAssertThrowsError(try Seccomp.importOCI(file: path)) { error in
            XCTAssertTrue("\(error)".contains("defaultAction"), "\(error)")
        }
    }
}

final class RootFSPlanTests: XCTestCase {
    private func profile() throws -> Profile {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try ProfileLoader.load(repo.appendingPathComponent("profiles/default.json").path)
    }

    func testPlanNeverExposesHostSecretsOrHomes() throws {
        let ops = try RootFS.plan(profile: try profile(), workspace: nil)
        var targets: [String] = [], sources: [String] = []
        for op in ops {
            switch op {
            case let .bind(source, target, _, _): sources.append(source); targets.append(target)
            case let .mkdir(p, _), let .symlink(p, _), let .writeFile(p, _, _), let .tmpfs(p, _, _), let .proc(p), let .devpts(p):
                targets.append(p)
            case .setAttributes: break
            }
        }
        for forbidden in ["/root", "/home", "/run", "/var", "/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh/ssh_host_rsa_key"] {
            XCTAssertFalse(targets.contains { $0 == forbidden || $0.hasPrefix(forbidden + "/") }, "\(forbidden) must not be in the jail")
            XCTAssertFalse(sources.contains { $0 == forbidden || ($0.hasPrefix(forbidden + "/") && !$0.hasPrefix(HostCache.root + "/")) },
                           "\(forbidden) must not be exposed")
        }
        XCTAssertFalse(sources.contains("/"), "never the host's /")
        if let etc = sources.first(where: { $0.hasPrefix(HostCache.root + "/etc-") }) {
            XCTAssertFalse(FileManager.default.fileExists(atPath: etc + "/shadow"))
            XCTAssertTrue(FileManager.default.fileExists(atPath: etc + "/passwd"))
        }
    }

    func testSystemIsReadOnlyAndScratchSpacesAreSized() throws {
        var p = try profile()
        p.limits.tmpBytes = 12345 << 10
        let ops = try RootFS.plan(profile: p, workspace: nil)
        XCTAssertTrue(ops.contains(.bind(source: "/usr", target: "/usr", isFile: false, attributes: MountOp.readOnly)))
        XCTAssertTrue(ops.contains(.setAttributes("/etc", attributes: MountOp.readOnly, recursive: true)))
        XCTAssertTrue(ops.contains { if case .bind(_, "/dev", _, let a) = $0 { return a & CJAIL_MOUNT_ATTR_RDONLY != 0 }; return false })
        XCTAssertTrue(ops.contains { if case let .tmpfs("/tmp", o, _) = $0 { return o.contains("size=\(12345 << 10)") }; return false })
        XCTAssertTrue(ops.contains(.proc("/proc")))
        XCTAssertTrue(ops.contains(.devpts("/dev/pts")))
    }

    func testReadOnlyProfileMountsTheWorkspaceReadOnly() throws {
        var p = try profile()
        p.workspace = .readOnly
        let ops = try RootFS.plan(profile: p, workspace: "/tmp")
        XCTAssertTrue(ops.contains(.bind(source: "/tmp", target: "/workspace", isFile: false, attributes: MountOp.readOnly)))
    }
}

final class CgroupV2LaunchTests: XCTestCase {
    /// On a cgroup v2 host the jail is created inside its cgroup with clone3(CLONE_INTO_CGROUP).
    /// This host may mount v1 controllers; a bare cgroup2 hierarchy still shows the mechanics.
    func testJailIsBornInsideItsV2Cgroup() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root (cgroups, user namespaces)") }
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].first { Cgroup.detectVersion(root: $0) == .v2 }
        guard let root else { throw XCTSkip("no cgroup2 hierarchy mounted on this host") }
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var profile = try ProfileLoader.load(repo.appendingPathComponent("profiles/default.json").path)
        let controllers = (try? String(contentsOfFile: root + "/cgroup.controllers", encoding: .utf8)) ?? ""
        if !controllers.contains("memory") { profile.limits.memoryBytes = nil }
        if !controllers.contains("pids") { profile.limits.pids = nil }
        profile.limits.maxOutputBytes = 0
        var request = JailRequest(profile: profile, argv: ["cat", "/proc/self/cgroup"])
        request.cgroupRoot = root
        let initPath = Jail.initPath()
        guard FileManager.default.fileExists(atPath: initPath) else { throw XCTSkip("sbx-init not built next to the test bundle") }
        let result = try Jail.run(request)
        XCTAssertEqual(result.reason, .exited, result.setupError ?? String(decoding: result.stderr, as: UTF8.self))
        // Inside its own cgroup namespace the jail's cgroup is the root: "0::/".
        XCTAssertTrue(String(decoding: result.stdout, as: UTF8.self).contains("0::/\n"), String(decoding: result.stdout, as: UTF8.self))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: root + "/sbx").filter { $0.hasPrefix("run-\(getpid())-") }
        XCTAssertEqual(leftovers, [], "the jail's cgroup is removed")
    }
}
