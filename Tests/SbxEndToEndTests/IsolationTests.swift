// The jail's walls: namespaces, identity mapping, the minimal root, /dev,
// /proc, network, IPC, capabilities, file descriptors and environment. Each
// test tries the forbidden thing inside and, where possible, shows the same
// action working on the host.
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

final class IsolationTests: SbxTestCase {

    // MARK: - host files

    func testJailCannotReadHostShadowFile() throws {
        // Host control: root reads it.
        let host = try Harness.host("head -c 5 /etc/shadow")
        XCTAssertEqual(host.status, 0)
        XCTAssertFalse(host.out.isEmpty)

        let script = """
        import json
        res = {}
        for p in ["/etc/shadow", "/etc/gshadow", "/proc/1/root/etc/shadow", "/proc/self/root/etc/shadow",
                  "/oldroot/etc/shadow", "/workspace/../etc/shadow", "/proc/1/cwd/../etc/shadow",
                  "/proc/kcore", "/proc/kmsg", "/proc/1/exe/../../../etc/shadow"]:
            try:
                open(p, "rb").read(1); res[p] = "READ"
            except OSError as e:
                res[p] = e.errno
        print(json.dumps(res))
        """
        let r = try jailPython(script)
        XCTAssertEqual(r.status, 0, r.err)
        let res = try parseObject(r.out)
        XCTAssertFalse(res.isEmpty)
        for (path, outcome) in res {
            XCTAssertNotEqual(outcome as? String, "READ", "\(path) was readable in the jail")
        }
    }

    func testJailPasswdAndGroupAreGeneratedNotTheHosts() throws {
        let r = try sbxRun([], ["sh", "-c", "cat /etc/passwd; echo ---; cat /etc/group"])
        XCTAssertEqual(r.status, 0, r.err)
        let parts = r.out.components(separatedBy: "---\n")
        XCTAssertEqual(parts.count, 2)
        let users = parts[0].split(separator: "\n").map { String($0.split(separator: ":").first ?? "") }
        XCTAssertEqual(Set(users), ["root", "nobody"], "passwd must list only root and nobody: \(parts[0])")
        let hostPasswd = Harness.read("/etc/passwd") ?? ""
        XCTAssertNotEqual(parts[0], hostPasswd)
    }

    func testProfileEtcListCannotExposeShadowFiles() throws {
        // The forbidden entries must stay out however a profile spells them: such a profile is
        // refused outright (exit 125 naming the etc field), so nothing runs with it.
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/etc/shadow"), "host control: /etc/shadow exists on the host")
        for entry in ["./shadow", "gshadow", "shadow/.", "shadow-", "gshadow-", ".", "sudoers", "ssh/ssh_host_rsa_key", "ssl/private"] {
            let profile = try makeProfile(extra: ["etc": [entry]])
            let r = try sbxRun(["--profile", profile], ["sh", "-c", "for f in shadow gshadow shadow- gshadow-; do test -e /etc/$f && echo EXPOSED-$f; done; echo end"])
            XCTAssertEqual(r.status, 125, "profile with etc entry \(entry) must be refused: \(r.out)")
            XCTAssertTrue(r.err.contains("field 'etc'"), r.err)
            XCTAssertFalse(r.out.contains("EXPOSED"), "etc entry \(entry) exposed shadow files: \(r.out)")
        }
        // An ordinary entry still works.
        let ok = try makeProfile(extra: ["etc": ["ld.so.cache", "ssh/ssh_config"]])
        XCTAssertEqual(try sbxRun(["--profile", ok], ["true"]).status, 0)
    }

    func testWorkspaceSymlinksCannotReachHostFiles() throws {
        let ws = try makeWorkspace()
        let secretDir = try makeTempDir(owner: nil, mode: 0o755)
        let secret = try writeFile(secretDir + "/secret.txt", "host-secret-\(UUID())\n", owner: nil)
        symlink("/etc/shadow", ws + "/shadow-link")
        symlink(secret, ws + "/abs-link")
        symlink("../../../../../../../..\(secret)", ws + "/rel-link")
        // Host control: the links resolve on the host.
        for link in ["shadow-link", "abs-link", "rel-link"] {
            XCTAssertNotNil(FileManager.default.contents(atPath: ws + "/" + link), "host should follow \(link)")
        }
        let r = try sbxRun(["--workspace", ws], ["sh", "-c", "for f in shadow-link abs-link rel-link; do cat $f 2>/dev/null && echo LEAK-$f; done; echo end"])
        XCTAssertEqual(r.out, "end\n", "a workspace symlink reached a host file: \(r.out)")
    }

    // MARK: - identity

    func testJailRootIsUnprivilegedHostUser() throws {
        let ws = try makeWorkspace()
        let marker = Harness.uniqueMarker("uid")
        let script = "import time,sys; open('/workspace/ready','w').close(); time.sleep(60)"
        let p = try sbxStart(["--workspace", ws, "--timeout", "30"], ["python3", "-c", script, marker])
        XCTAssertTrue(p.waitUntil { FileManager.default.fileExists(atPath: ws + "/ready") }, "jail did not start: \(String(decoding: p.stderrSoFar, as: UTF8.self))")
        let jailed = Harness.pids(withCmdlineContaining: marker, except: [p.pid])
        XCTAssertFalse(jailed.isEmpty, "cannot find the jailed python on the host")
        for pid in jailed {
            guard let uids = Harness.statusField(pid: pid, "Uid"), let gids = Harness.statusField(pid: pid, "Gid") else { continue }
            XCTAssertEqual(uids.split(whereSeparator: { $0 == "\t" || $0 == " " }), ["65534", "65534", "65534", "65534"], "host uids of jailed pid \(pid)")
            XCTAssertEqual(gids.split(whereSeparator: { $0 == "\t" || $0 == " " }), ["65534", "65534", "65534", "65534"], "host gids of jailed pid \(pid)")
        }
        XCTAssertEqual(Harness.owner(of: ws + "/ready")?.uid, 65534, "files the jail creates belong to the unprivileged uid")
        p.signal(SIGTERM)
        let r = p.wait(timeout: 10)
        XCTAssertEqual(r.status, 128 + SIGTERM)
        XCTAssertEqual(Harness.survivors(of: marker), [])

        let inside = try sbxRun([], ["id", "-u"])
        XCTAssertEqual(inside.out, "0\n", "the jail sees itself as uid 0")
    }

    func testJailRootMapsToOwnerOfNonRootWorkspace() throws {
        let ws = try makeTempDir(owner: (4242, 4343))
        let r = try sbxRun(["--workspace", ws], ["sh", "-c", "id -u; touch /workspace/mine; stat -c '%u:%g' /workspace"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "0\n0:0\n", "inside, the workspace owner is the jail's root")
        let owner = Harness.owner(of: ws + "/mine")
        XCTAssertEqual(owner?.uid, 4242)
        XCTAssertEqual(owner?.gid, 4343)
    }

    func testJailRootCannotReadOrChangeHostRootsPrivateFiles() throws {
        let ws = try makeWorkspace()
        let secret = try writeFile(ws + "/root-secret", "only-host-root\n", mode: 0o600, owner: (0, 0))
        XCTAssertEqual(Harness.read(secret), "only-host-root\n", "host root reads it")
        let r = try sbxRun(["--workspace", ws], ["sh", "-c", """
            cat /workspace/root-secret 2>/dev/null && echo READ
            chmod 666 /workspace/root-secret 2>/dev/null && echo CHMOD
            chown 0:0 /workspace/root-secret 2>/dev/null && echo CHOWN
            rm -f /workspace/root-secret 2>/dev/null; stat -c '%u' /workspace/root-secret
            echo end
            """])
        // The workspace dir belongs to the jail, so unlinking is allowed; reading, chmod and chown are not.
        XCTAssertFalse(r.out.contains("READ"), r.out)
        XCTAssertFalse(r.out.contains("CHMOD"), r.out)
        XCTAssertFalse(r.out.contains("CHOWN"), r.out)
        XCTAssertTrue(r.out.hasSuffix("end\n"), r.out)
    }

    func testJailCannotSwitchToOtherHostUsers() throws {
        let r = try jailPython("""
            import os, json
            res = {}
            for name, f in [("setuid", lambda: os.setuid(1000)), ("setgid", lambda: os.setgid(1000)),
                            ("setgroups", lambda: os.setgroups([0, 1])), ("seteuid", lambda: os.seteuid(65534))]:
                try:
                    f(); res[name] = 0
                except OSError as e:
                    res[name] = e.errno
            print(json.dumps(res))
            """)
        let res = try parseObject(r.out)
        for (name, outcome) in res {
            XCTAssertNotEqual(res.int(name), 0, "\(name) succeeded in the jail: \(outcome)")
        }
        XCTAssertEqual(res.count, 4)
    }

    func testJailHasNoCapabilitiesAndNoNewPrivileges() throws {
        // Host control: root has capabilities.
        let hostEff = Harness.statusField(pid: getpid(), "CapEff") ?? ""
        XCTAssertNotEqual(hostEff, "0000000000000000")

        let r = try sbxRun([], ["cat", "/proc/self/status"])
        XCTAssertEqual(r.status, 0, r.err)
        var fields: [String: String] = [:]
        for line in r.out.split(separator: "\n") {
            let kv = line.split(separator: ":", maxSplits: 1)
            if kv.count == 2 { fields[String(kv[0])] = kv[1].trimmingCharacters(in: .whitespaces) }
        }
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            XCTAssertEqual(fields[cap], "0000000000000000", "\(cap) in the jail")
        }
        XCTAssertEqual(fields["NoNewPrivs"], "1")
        XCTAssertEqual(fields["Seccomp"], "2", "seccomp filter mode")

        // Capabilities do not come back through exec of a root-owned program as uid 0.
        let again = try sbxRun([], ["sh", "-c", "exec sh -c 'grep CapEff /proc/self/status'"])
        XCTAssertEqual(again.out.trimmingCharacters(in: .whitespacesAndNewlines), "CapEff:\t0000000000000000")
    }

    // MARK: - the root file system

    func testJailRootContainsOnlyTheMinimalTree() throws {
        var expected: Set<String> = ["bin", "dev", "etc", "lib", "proc", "sbin", "tmp", "usr", "workspace"]
        for optional in ["lib32", "lib64", "libx32"] where FileManager.default.fileExists(atPath: "/" + optional) {
            expected.insert(optional)
        }
        let r = try sbxRun([], ["ls", "-A", "/"])
        XCTAssertEqual(r.status, 0, r.err)
        let entries = Set(r.out.split(separator: "\n").map(String.init))
        XCTAssertEqual(entries, expected)
        // Host control: these exist on the host but must not in the jail.
        for hidden in ["root", "home", "run", "var", "sys", "boot", "oldroot", "mnt", "opt", "srv"] {
            XCTAssertFalse(entries.contains(hidden), "/\(hidden) is visible in the jail")
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/root"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/run"))
    }

    func testRootFileSystemIsReadOnly() throws {
        let r = try jailPythonGuarded("""
            import os, json
            res = {}
            def attempt(name, f):
                try:
                    f(); res[name] = 0
                except OSError as e:
                    res[name] = e.errno
            attempt("create /x", lambda: open("/x", "w"))
            attempt("mkdir /newdir", lambda: os.mkdir("/newdir"))
            attempt("append /etc/passwd", lambda: open("/etc/passwd", "a"))
            attempt("create /etc/evil", lambda: open("/etc/evil", "w"))
            attempt("create /usr/bin/evil", lambda: open("/usr/bin/evil", "w"))
            attempt("append /usr/bin/python3", lambda: open("/usr/bin/python3", "ab"))
            attempt("create /bin/evil", lambda: open("/bin/evil", "w"))
            attempt("create /lib/evil", lambda: open("/lib/evil", "w"))
            attempt("rename /etc/hosts", lambda: os.rename("/etc/hosts", "/etc/hosts2"))
            attempt("unlink /bin", lambda: os.unlink("/bin"))
            attempt("chmod /usr", lambda: os.chmod("/usr", 0o777))
            ok = {}
            for p in ["/tmp/ok", "/workspace/ok"]:
                open(p, "w").write("fine"); ok[p] = open(p).read()
            res["writable"] = ok
            print(json.dumps(res))
            """)
        XCTAssertEqual(r.status, 0, r.err)
        let res = try parseObject(r.out)
        for (name, v) in res where name != "writable" {
            XCTAssertNotEqual((v as? NSNumber)?.intValue, 0, "\(name) succeeded: the root file system must be read-only")
        }
        XCTAssertEqual(res["writable"] as? [String: String], ["/tmp/ok": "fine", "/workspace/ok": "fine"])
    }

    func testEtcHoldsOnlyAllowListedEntries() throws {
        let allowed: Set<String> = [
            "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "localtime", "timezone",
            "ssl", "ca-certificates", "ca-certificates.conf", "protocols", "services", "os-release", "debian_version",
            "mime.types", "bash.bashrc", "inputrc", "profile", "profile.d", "environment", "login.defs", "gai.conf", "mailcap",
            "magic", "magic.mime", "gitconfig", "python3", "python3.11", "perl", "vim", "ssh",
            "passwd", "group", "hostname", "hosts",
        ]
        let r = try sbxRun([], ["sh", "-c", "ls -A /etc; echo ---; ls -A /etc/ssh 2>/dev/null; echo ---; cat /etc/hosts"])
        XCTAssertEqual(r.status, 0, r.err)
        let parts = r.out.components(separatedBy: "---\n")
        XCTAssertEqual(parts.count, 3)
        let etc = Set(parts[0].split(separator: "\n").map(String.init))
        XCTAssertEqual(etc.subtracting(allowed), [], "entries in /etc beyond the allow list")
        for secret in ["shadow", "gshadow", "sudoers", "shadow-", "machine-id", "resolv.conf"] {
            XCTAssertFalse(etc.contains(secret), "/etc/\(secret) is visible")
        }
        let ssh = Set((parts[safe: 1] ?? "").split(separator: "\n").map(String.init))
        XCTAssertTrue(ssh.subtracting(["ssh_config"]).isEmpty, "/etc/ssh exposes more than ssh_config: \(ssh)")
        XCTAssertTrue((parts[safe: 2] ?? "").contains("sbx"), "generated /etc/hosts names the jail host: \(parts[safe: 2] ?? "")")
    }

    func testDevHoldsOnlySafeDevicesAndAPrivateDevpts() throws {
        let r = try sbxRun([], ["sh", "-c", "ls -A /dev; echo ---; ls -A /dev/pts"])
        XCTAssertEqual(r.status, 0, r.err)
        let parts = r.out.components(separatedBy: "---\n")
        let dev = Set(parts[0].split(separator: "\n").map(String.init))
        let expected: Set<String> = ["null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin", "stdout", "stderr"]
        XCTAssertEqual(dev, expected)
        XCTAssertEqual(parts.count, 2)
        XCTAssertEqual(parts.last?.split(separator: "\n").map(String.init), ["ptmx"], "devpts must be a new instance")
        // Host control: the host /dev has disks, memory and the kernel log.
        let hostDev = Set((try? FileManager.default.contentsOfDirectory(atPath: "/dev")) ?? [])
        XCTAssertTrue(hostDev.count > dev.count)
    }

    func testDevicesBehaveAndNewDeviceNodesCannotBeMade() throws {
        let r = try jailPythonGuarded("""
            import os, json
            res = {}
            res["zero"] = open("/dev/zero", "rb").read(4).hex()
            open("/dev/null", "w").write("discarded")
            res["null_read"] = open("/dev/null", "rb").read()
            res["urandom_len"] = len(open("/dev/urandom", "rb").read(16))
            try:
                f = open("/dev/full", "w"); f.write("x"); f.flush(); res["full"] = 0
            except OSError as e:
                res["full"] = e.errno
            try:
                os.mknod("/dev/shm/sda", 0o600 | 0o060000, os.makedev(8, 0)); res["mknod"] = 0
            except OSError as e:
                res["mknod"] = e.errno
            try:
                os.mknod("/tmp/mem", 0o600 | 0o020000, os.makedev(1, 1)); fd = os.open("/tmp/mem", os.O_RDONLY); res["mknod_tmp"] = 0
            except OSError as e:
                res["mknod_tmp"] = e.errno
            try:
                os.mknod("/workspace/null2", 0o666 | 0o020000, os.makedev(1, 3)); res["mknod_ws"] = 0
            except OSError as e:
                res["mknod_ws"] = e.errno
            try:
                os.open("/dev/tty", os.O_RDWR); res["tty"] = 0
            except OSError as e:
                res["tty"] = e.errno
            res["null_read"] = len(res["null_read"])
            print(json.dumps(res))
            """)
        XCTAssertEqual(r.status, 0, r.err)
        let res = try parseObject(r.out)
        XCTAssertEqual(res["zero"] as? String, "00000000")
        XCTAssertEqual(res.int("null_read"), 0)
        XCTAssertEqual(res.int("urandom_len"), 16)
        XCTAssertEqual(res.int("full"), Int(ENOSPC))
        XCTAssertNotEqual(res.int("mknod"), 0, "a block device node was created")
        XCTAssertNotEqual(res.int("mknod_tmp"), 0, "/dev/mem could be recreated and opened")
        XCTAssertNotEqual(res.int("mknod_ws"), 0, "a device node was created in the workspace")
        XCTAssertEqual(res.int("tty"), Int(ENXIO), "no controlling terminal: /dev/tty must fail with ENXIO")
    }

    func testTmpIsAWritableOneGiBTmpfs() throws {
        let r = try sbxRun([], ["sh", "-c", Harness.shellJailGuard + "stat -f -c '%T %b %S' /tmp; echo data > /tmp/f && cat /tmp/f; echo $HOME"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3)
        let f = (lines[safe: 0] ?? "").split(separator: " ")
        XCTAssertEqual(f.first, "tmpfs")
        if f.count == 3, let blocks = UInt64(f[1]), let size = UInt64(f[2]) {
            XCTAssertEqual(blocks * size, 1 << 30, "/tmp must be 1 GiB")
        } else {
            XCTFail("unexpected statfs output \(lines[safe: 0] ?? "")")
        }
        XCTAssertEqual(lines[safe: 1], "data")
        XCTAssertEqual(lines[safe: 2], "/tmp")
    }

    func testWorkspaceIsTheHostDirectoryReadWrite() throws {
        let ws = try makeWorkspace()
        let token = UUID().uuidString
        try writeFile(ws + "/in.txt", token)
        let r = try sbxRun(["--workspace", ws], ["sh", "-c", "cat /workspace/in.txt > /workspace/out.txt; echo more >> /workspace/out.txt; mkdir /workspace/sub; echo x > /workspace/sub/y"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(Harness.read(ws + "/out.txt"), token + "more\n")
        XCTAssertEqual(Harness.read(ws + "/sub/y"), "x\n")
        XCTAssertEqual(Harness.owner(of: ws + "/out.txt")?.uid, 65534)
    }

    func testDefaultWorkspaceIsAnEmptyPrivateTmpfs() throws {
        let first = try sbxRun([], ["sh", "-c", "ls -A /workspace | wc -l; stat -f -c %T /workspace; echo persisted > /workspace/f && echo wrote"])
        XCTAssertEqual(first.status, 0, first.err)
        XCTAssertEqual(first.out, "0\ntmpfs\nwrote\n")
        let second = try sbxRun([], ["ls", "-A", "/workspace"])
        XCTAssertEqual(second.out, "", "a second jail must not see the first one's workspace")
    }

    func testReadonlyProfileMountsWorkspaceReadOnly() throws {
        let ws = try makeWorkspace()
        try writeFile(ws + "/data", "keep\n")
        let r = try sbxRun(["--profile", "readonly", "--workspace", ws],
                           ["sh", "-c", "cat /workspace/data; echo changed > /workspace/data 2>/dev/null && echo WROTE; touch /workspace/new 2>/dev/null && echo CREATED; echo end"])
        XCTAssertEqual(r.out, "keep\nend\n")
        XCTAssertEqual(Harness.read(ws + "/data"), "keep\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: ws + "/new"))
    }

    // MARK: - namespaces

    func testJailRunsInFreshNamespacesOfEveryKind() throws {
        let kinds = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"]
        let r = try sbxRun([], ["sh", "-c", kinds.map { "readlink /proc/self/ns/\($0)" }.joined(separator: "; ")])
        XCTAssertEqual(r.status, 0, r.err)
        let inside = r.out.split(separator: "\n").map(String.init)
        XCTAssertEqual(inside.count, kinds.count)
        for (i, kind) in kinds.enumerated() where i < inside.count {
            let host = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(kind)")) ?? "?"
            XCTAssertTrue(inside[i].hasPrefix(kind + ":["), inside[i])
            XCTAssertNotEqual(inside[i], host, "the jail shares the host's \(kind) namespace")
        }
    }

    func testPid1IsSbxInitAndTheCommandIsItsChild() throws {
        // The command may start a moment before pid 1 has exec'd sbx-init: allow it a second to get there.
        let r = try sbxRun([], ["sh", "-c", "for i in $(seq 100); do [ \"$(cat /proc/1/comm)\" = sbx-init ] && break; sleep 0.01; done; cat /proc/1/comm; echo $$ $PPID; ls /proc | grep -c '^[0-9]'"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "sbx-init")
        XCTAssertEqual(lines.dropFirst().first, "2 1")
        if let n = Int(lines.last ?? "") {
            XCTAssertLessThanOrEqual(n, 4, "only the jail's own processes are visible in /proc")
        } else {
            XCTFail("cannot count processes: \(r.out)")
        }
    }

    /// Runs the /proc/1 probe until it has caught pid 1 before its exec of sbx-init `wantEarly` times
    /// (or `maxRuns` runs); returns how often it did and every breach seen.
    private func probePid1Window(wantEarly: Int = 3, maxRuns: Int = 200) throws -> (early: Int, breaches: [String]) {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/cc") else { throw XCTSkip("no C compiler (/usr/bin/cc) for the /proc/1 probe") }
        let ws = try makeWorkspace()
        // The first thing the command does: look at pid 1 (a C program, to be early).
        try writeFile(ws + "/pid1.c", """
            #include <fcntl.h>
            #include <stdio.h>
            #include <unistd.h>
            int main(void) {
                char comm[64] = {0}, env[8192] = {0};
                int fd = open("/proc/1/comm", O_RDONLY); int n = read(fd, comm, sizeof comm - 1); close(fd);
                if (n > 0) comm[n - 1] = 0;
                int mem = open("/proc/1/mem", O_RDWR);
                // The fd holds the memory pid 1 had at the open. Its exe read after the open tells
                // which: still sbx means the open came before the exec of sbx-init (exec switches
                // the memory before it renames the process, so comm alone could be stale).
                char exe[256] = {0}; readlink("/proc/1/exe", exe, sizeof exe - 1);
                const char *base = exe; for (const char *p = exe; *p; p++) if (*p == '/') base = p + 1;
                int e = open("/proc/1/environ", O_RDONLY); int got = e >= 0 ? read(e, env, sizeof env - 1) : -1;
                for (int i = 0; i < got; i++) if (!env[i]) env[i] = ' ';
                printf("comm=%s mem=%s exe=%s environ=%s\\n", comm, mem >= 0 ? "OPEN" : "denied", base, got > 0 ? env : "denied");
                return 0;
            }
            """)
        // Static: no dynamic loader, so main() runs sooner and meets pid 1 earlier more often.
        var cc = try Harness.run("/usr/bin/cc", ["-O2", "-static", "-o", ws + "/pid1", ws + "/pid1.c"])
        if cc.status != 0 { cc = try Harness.run("/usr/bin/cc", ["-O2", "-o", ws + "/pid1", ws + "/pid1.c"]) }
        XCTAssertEqual(cc.status, 0, cc.err)
        chown(ws + "/pid1", 65534, 65534)
        let secret = "SBX_E2E_HOST_SECRET=" + UUID().uuidString
        var env = ProcessInfo.processInfo.environment
        env["SBX_E2E_HOST_SECRET"] = String(secret.dropFirst("SBX_E2E_HOST_SECRET=".count))
        var early = 0
        var breaches: [String] = []
        var runs = 0
        while runs < maxRuns && early < wantEarly {
            runs += 1
            let r = try sbxRun(["--workspace", ws], ["/workspace/pid1"], environment: env)
            let line = r.out.trimmingCharacters(in: .whitespacesAndNewlines)
            if !line.hasPrefix("comm=sbx-init ") { early += 1 }
            // (Only the probe's own marker is reported, never the rest of the environment it read.)
            let summary = line.components(separatedBy: " environ=").first ?? ""
            if line.contains(secret) { breaches.append("sbx's host environment (SBX_E2E_HOST_SECRET) readable through /proc/1/environ [\(summary)]") }
            if !line.hasPrefix("comm=sbx-init ") && line.contains("mem=OPEN") && !line.contains("exe=sbx-init ") {
                breaches.append("pid 1 still shares sbx's (host root) address space and /proc/1/mem opened read-write [\(summary)]")
            }
        }
        print("\(name): \(early) of \(runs) commands ran before pid 1 became sbx-init")
        return (early, breaches)
    }

    func testCommandCannotReachSbxMemoryOrEnvironmentThroughPid1() throws {
        // The command starts while pid 1 is still a clone of sbx sharing sbx's (host root) memory: the
        // exec of sbx-init comes after. That pid 1 must be out of the command's reach, on this host's
        // settings and with fs.suid_dumpable=1 (documented, non-default): the walls must not depend on it.
        // One test, so that the temporary sysctl cannot disturb a concurrent run of the first phase.
        let (_, breaches) = try probePid1Window(wantEarly: 2, maxRuns: 120)
        XCTAssertEqual(breaches, [], "with the host's fs.suid_dumpable")

        let path = "/proc/sys/fs/suid_dumpable"
        guard let old = Harness.read(path)?.trimmingCharacters(in: .whitespacesAndNewlines) else { throw XCTSkip("cannot read \(path)") }
        guard (try? Data("1".utf8).write(to: URL(fileURLWithPath: path))) != nil else { throw XCTSkip("cannot set \(path)") }
        print("\(name): fs.suid_dumpable temporarily 1 (was \(old))")
        defer { try? Data(old.utf8).write(to: URL(fileURLWithPath: path)) }
        let (early, dumpableBreaches) = try probePid1Window(wantEarly: 1, maxRuns: 400)
        if early == 0 { print("\(name): never caught pid 1 before sbx-init in 400 runs; the attack window did not open") }
        XCTAssertEqual(dumpableBreaches, [], "with fs.suid_dumpable=1 a jailed command reached sbx through pid 1")
    }

    func testJailCannotSeeOrSignalHostProcesses() throws {
        let marker = Harness.uniqueMarker("victim")
        let victim = try hostStart(Harness.python, ["-c", "import time; time.sleep(120)", marker])
        // Host control: the victim is visible on the host.
        XCTAssertTrue(victim.waitUntil { !Harness.pids(withCmdlineContaining: marker).isEmpty })
        let pid = victim.pid
        let script = """
        import os, json, signal
        res = {"seen": []}
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    if b"\(marker)" in open("/proc/%s/cmdline" % e, "rb").read(): res["seen"].append(e)
                except OSError: pass
        try:
            os.kill(\(pid), signal.SIGKILL); res["kill_pid"] = 0
        except OSError as e:
            res["kill_pid"] = e.errno
        try:
            os.kill(-1, signal.SIGKILL); res["kill_all"] = 0
        except OSError as e:
            res["kill_all"] = e.errno
        print(json.dumps(res), flush=True)
        """
        // kill(-1) spares the caller (and pid 1): the script is the command, so it reports afterwards.
        let ws = try makeWorkspace()
        try writeFile(ws + "/attack.py", Harness.pythonJailGuard + script)
        let r = try sbxRun(["--workspace", ws], ["python3", "/workspace/attack.py"])
        XCTAssertFalse(r.err.contains("REFUSING"), "the attack did not run inside a jail: \(r.err)")
        let res = try parseObject(r.out)
        XCTAssertEqual((res["seen"] as? [Any])?.count, 0, "the jail saw a host process")
        XCTAssertEqual(res.int("kill_pid"), Int(ESRCH), "kill of a host pid must find no such process")
        usleep(100_000)
        XCTAssertTrue(victim.isRunning, "the host process was killed from inside the jail")
    }

    func testCgroupNamespaceHidesTheJailsCgroupPath() throws {
        let ws = try makeWorkspace()
        let marker = Harness.uniqueMarker("cgns")
        let p = try sbxStart(["--workspace", ws, "--timeout", "30"],
                             ["python3", "-c", "import time; open('/workspace/cg','w').write(open('/proc/self/cgroup').read()); time.sleep(60)", marker])
        XCTAssertTrue(p.waitUntil { (Harness.read(ws + "/cg") ?? "").contains("\n") })
        let inside = Harness.read(ws + "/cg") ?? ""
        for line in inside.split(separator: "\n") {
            XCTAssertTrue(line.hasSuffix(":/"), "the jail sees a host cgroup path: \(line)")
        }
        // Host view of the same process: it really sits in sbx's cgroup.
        let jailed = Harness.pids(withCmdlineContaining: marker, except: [p.pid])
        XCTAssertFalse(jailed.isEmpty)
        if let pid = jailed.first {
            let hostView = Harness.read("/proc/\(pid)/cgroup") ?? ""
            XCTAssertTrue(hostView.contains("/sbx/run-\(p.pid)-"), "host view: \(hostView)")
        }
        p.signal(SIGTERM)
        _ = p.wait(timeout: 10)
    }

    func testJailCannotSeeHostSysVIPCObjects() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/ipcmk") else { throw XCTSkip("ipcmk (util-linux) is not installed") }
        let made = try Harness.host("ipcmk -M 4096")
        XCTAssertEqual(made.status, 0, made.err)
        guard let id = made.out.split(separator: ":").last.map({ $0.trimmingCharacters(in: .whitespacesAndNewlines) }), !id.isEmpty else {
            XCTFail("cannot parse ipcmk output: \(made.out)")
            return
        }
        defer { _ = try? Harness.host("ipcrm -m \(id)") }
        let hostShm = Harness.read("/proc/sysvipc/shm") ?? ""
        XCTAssertTrue(hostShm.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first == Substring(id) },
                      "host control: the segment is listed on the host")
        let r = try sbxRun([], ["sh", "-c", "tail -n +2 /proc/sysvipc/shm | wc -l"])
        XCTAssertEqual(r.out, "0\n", "the jail sees host shared memory segments")
    }

    func testHostnameIsSbxAndCannotBeChanged() throws {
        let hostBefore = Harness.read("/proc/sys/kernel/hostname")
        let r = try jailPythonGuarded("""
            import socket, json
            res = {"name": socket.gethostname()}
            try:
                socket.sethostname("evil"); res["set"] = 0
            except OSError as e:
                res["set"] = e.errno
            print(json.dumps(res))
            """)
        let res = try parseObject(r.out)
        XCTAssertEqual(res["name"] as? String, "sbx")
        XCTAssertNotEqual(res.int("set"), 0)
        XCTAssertEqual(Harness.read("/proc/sys/kernel/hostname"), hostBefore)
    }

    func testKernelTunablesInProcAreNotWritable() throws {
        let before = Harness.read("/proc/sys/kernel/core_pattern")
        let r = try jailPythonGuarded("""
            import json
            res = {}
            for p, v in [("/proc/sys/kernel/core_pattern", "|/workspace/evil"), ("/proc/sysrq-trigger", "h"),
                         ("/proc/sys/vm/drop_caches", "3"), ("/proc/sys/kernel/modprobe", "/workspace/evil"),
                         ("/proc/sys/kernel/hostname", "evil")]:
                try:
                    with open(p, "w") as f: f.write(v)
                    res[p] = 0
                except OSError as e:
                    res[p] = e.errno
            print(json.dumps(res))
            """)
        let res = try parseObject(r.out)
        XCTAssertEqual(res.count, 5)
        for (p, v) in res { XCTAssertNotEqual((v as? NSNumber)?.intValue, 0, "\(p) was writable") }
        XCTAssertEqual(Harness.read("/proc/sys/kernel/core_pattern"), before)
    }

    // MARK: - network

    /// A host listener on TCP 127.0.0.1 and on an abstract Unix socket; answers "hello".
    private func startHostListener() throws -> (RunningCommand, port: Int, abstract: String) {
        let dir = try makeTempDir(owner: nil)
        let name = "sbx-e2e-" + UUID().uuidString
        let script = """
        import socket, threading, sys, os
        t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(16)
        u = socket.socket(socket.AF_UNIX); u.bind("\\0" + sys.argv[1]); u.listen(16)
        def serve(s):
            while True:
                c, _ = s.accept(); c.sendall(b"hello"); c.close()
        for s in (t, u): threading.Thread(target=serve, args=(s,), daemon=True).start()
        open(sys.argv[2] + "/port.tmp", "w").write(str(t.getsockname()[1])); os.rename(sys.argv[2] + "/port.tmp", sys.argv[2] + "/port")
        threading.Event().wait(120)
        """
        let p = try hostStart(Harness.python, ["-c", script, name, dir])
        XCTAssertTrue(p.waitUntil { FileManager.default.fileExists(atPath: dir + "/port") }, "host listener did not start")
        let port = Int(Harness.read(dir + "/port") ?? "") ?? 0
        return (p, port, name)
    }

    private static let connectScript = """
    import socket, sys, json
    res = {}
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3); res["tcp"] = s.recv(5).decode()
    except OSError as e:
        res["tcp"] = e.errno
    try:
        u = socket.socket(socket.AF_UNIX); u.settimeout(3); u.connect("\\0" + sys.argv[2]); res["abstract"] = u.recv(5).decode()
    except OSError as e:
        res["abstract"] = e.errno
    res["ifaces"] = [n for _, n in socket.if_nameindex()]
    print(json.dumps(res))
    """

    func testJailCannotReachHostNetworkServicesOrAbstractSockets() throws {
        let (_, port, abstract) = try startHostListener()
        // Host control: both answer on the host.
        let host = try Harness.hostPython(Self.connectScript, [String(port), abstract])
        let h = try parseObject(host.out)
        XCTAssertEqual(h["tcp"] as? String, "hello")
        XCTAssertEqual(h["abstract"] as? String, "hello")

        let r = try jailPython(Self.connectScript, [String(port), abstract])
        XCTAssertEqual(r.status, 0, r.err)
        let j = try parseObject(r.out)
        XCTAssertEqual(j.int("tcp"), Int(ECONNREFUSED), "the jail reached a host TCP service: \(j)")
        XCTAssertEqual(j.int("abstract"), Int(ECONNREFUSED), "the jail reached a host abstract socket: \(j)")
        XCTAssertEqual(j["ifaces"] as? [String], ["lo"], "only loopback in the default profile")
        XCTAssertGreaterThan((h["ifaces"] as? [String])?.count ?? 0, 0)

        // The same probe with --net host does reach the host (so the probe is sound).
        let open = try jailPython(Self.connectScript, [String(port), abstract], options: ["--net", "host"])
        let o = try parseObject(open.out)
        XCTAssertEqual(o["tcp"] as? String, "hello", "--net host should share the host network: \(o)")
    }

    func testLoopbackIsUpInsideTheJail() throws {
        let r = try jailPython("""
            import socket
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
            c = socket.create_connection(s.getsockname(), timeout=3)
            a, _ = s.accept(); a.sendall(b"pong"); print(c.recv(4).decode())
            """)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "pong\n")
    }

    // MARK: - process state

    func testEveryFileDescriptorAboveStderrIsClosed() throws {
        let dir = try makeTempDir(owner: nil)
        let script = """
        import os
        def is_open(fd):
            try:
                os.fstat(fd); return True
            except OSError:
                return False
        print(",".join(str(fd) for fd in range(0, 4096) if is_open(fd)))
        """
        try writeFile(dir + "/fds.py", script, owner: nil)
        // Host control: the shell's extra fds (a directory fd on host /, /etc/shadow, a writable file) reach an ordinary child.
        let leak = "exec 3</ 5</ 7</etc/shadow 9>>\(dir)/leak; "
        let host = try Harness.host(leak + "\(Harness.python) \(dir)/fds.py")
        let hostFDs = host.out.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").map(String.init)
        XCTAssertTrue(["3", "5", "7", "9"].allSatisfy(hostFDs.contains), "host control: \(host.out)")
        // The same fds handed to sbx reach neither the jailed command nor the jail's init (reachable through /proc/1/fd).
        let ws = try makeWorkspace()
        try writeFile(ws + "/fds.py", script)
        try writeFile(ws + "/check.sh", "python3 /workspace/fds.py\nls /proc/1/fd | sort -n | tr '\\n' ' '\necho\n")
        let r = try Harness.host(leak + "exec \(sbx) run --workspace \(ws) -- sh /workspace/check.sh")
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(lines.first, "0,1,2", "file descriptors leaked into the jailed command")
        XCTAssertEqual(lines.dropFirst().first, "0 1 2 3", "sbx-init holds more than stdio and its status pipe")
    }

    func testClosedStdinDoesNotHandTheJailAHostFile() throws {
        // With sbx's own stdin closed, the jail's fd 0 must not be some fd sbx opened on the host
        // (e.g. its O_PATH handle on sbx-init, which names a host file outside the jail's mounts).
        let r = try Harness.host("exec 0<&-; exec \(sbx) run -- sh -c 'readlink /proc/self/fd/0 || echo closed'")
        XCTAssertEqual(r.status, 0, r.err)
        let target = r.out.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(["closed", "/dev/null"].contains(target) || target.hasPrefix("pipe:"),
                      "the jail's stdin is a host object: \(target)")
        XCTAssertFalse(target.contains("sbx-init"), "sbx's handle on sbx-init leaked into the jail as fd 0")
    }

    func testEnvironmentIsClearedToTheProfilesPlusEnvOptions() throws {
        var env = ProcessInfo.processInfo.environment
        env["SBX_E2E_SECRET_TOKEN"] = "leaked-\(UUID())"
        env["LD_PRELOAD"] = "/nonexistent.so"
        let r = try sbxRun(["--env", "EXTRA=1", "--env", "TERM=xterm"], ["/usr/bin/env"], environment: env)
        XCTAssertEqual(r.status, 0, r.err)
        let vars = Set(r.out.split(separator: "\n").map(String.init))
        XCTAssertEqual(vars, [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
            "TERM=xterm", "USER=root", "EXTRA=1",
        ])
        let plain = try sbxRun([], ["/usr/bin/env"], environment: env)
        XCTAssertTrue(plain.out.contains("TERM=dumb\n"))
        XCTAssertFalse(plain.out.contains("SBX_E2E_SECRET_TOKEN"))
    }

    func testJailHasItsOwnSessionAndNoControllingTerminal() throws {
        let r = try jailPython("""
            import os, json
            res = {"sid": os.getsid(0), "pgid_of_init": os.getpgid(1)}
            try:
                os.open("/dev/tty", os.O_RDONLY); res["tty"] = 0
            except OSError as e:
                res["tty"] = e.errno
            print(json.dumps(res))
            """)
        let res = try parseObject(r.out)
        XCTAssertEqual(res.int("sid"), 1, "the jail's session is led by its init (setsid)")
        XCTAssertEqual(res.int("tty"), Int(ENXIO))
    }
}
