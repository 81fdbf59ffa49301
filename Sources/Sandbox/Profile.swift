import SBXJSON
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A named, declarative jail configuration (profiles/NAME.json).
///
/// A profile may `extend` another: objects merge key by key, everything else
/// replaces. Unknown keys are errors, so a typo never silently weakens a jail.
public struct Profile: Sendable, Equatable {
    public enum Network: String, Sendable { case none, host }
    public enum Access: String, Sendable { case readWrite = "rw", readOnly = "ro" }

    public struct Limits: Sendable, Equatable {
        public var timeoutSeconds: Double
        public var memoryBytes: UInt64?
        public var pids: UInt64?
        public var nofile: UInt64
        public var fileSizeBytes: UInt64?
        public var cpuSeconds: UInt64?
        public var tmpBytes: UInt64
        /// Bytes kept of each of stdout and stderr (head + tail); 0 keeps everything.
        public var maxOutputBytes: UInt64
        /// Total output after which the jail is killed with reason `output_limit`.
        public var outputKillBytes: UInt64
    }

    /// A host path exposed read-only (or read-write) inside the jail.
    public struct Mount: Sendable, Equatable {
        public var source: String
        public var target: String
        public var writable: Bool
    }

    public var name: String
    public var description: String
    public var file: String
    public var network: Network
    public var workspace: Access
    public var limits: Limits
    public var env: [String: String]
    public var hostname: String
    /// Entries of the host's /etc exposed read-only (allow list).
    public var etc: [String]
    public var mounts: [Mount]
    /// Host uid/gid the jail's root maps to when the workspace belongs to root.
    public var hostUID: UInt32
    public var hostGID: UInt32
    /// Extra Docker/OCI seccomp profiles stacked on top of the built-in deny list.
    public var seccompImports: [String]
    /// Extra syscalls to deny with EPERM, beyond the built-in list.
    public var seccompDeny: [String]
}

// MARK: - Loading

public enum ProfileLoader {
    /// Directories searched for NAME.json, in order.
    public static func searchPath() -> [String] {
        var dirs: [String] = []
        if let env = getenv("SBX_PROFILE_PATH") {
            dirs += String(cString: env).split(separator: ":").map(String.init)
        }
        if let exe = executableDirectory() {
            dirs += [exe + "/profiles", exe + "/../share/sbx/profiles", exe + "/../../profiles", exe + "/../../../profiles"]
        }
        dirs.append("/usr/local/share/sbx/profiles")
        dirs.append("/usr/share/sbx/profiles")
        return dirs
    }

    /// Loads a profile by name (searched) or by path (contains '/' or ends in .json).
    public static func load(_ nameOrPath: String) throws(SandboxError) -> Profile {
        var seen: [String] = []
        let (file, json) = try resolve(nameOrPath, relativeTo: nil, seen: &seen)
        return try decode(json, file: file)
    }

    static func isPath(_ s: String) -> Bool { s.contains("/") || s.hasSuffix(".json") }

    static func resolve(_ ref: String, relativeTo base: String?, seen: inout [String]) throws(SandboxError) -> (String, JSON) {
        let file: String
        if isPath(ref) {
            if ref.hasPrefix("/") || base == nil { file = ref } else { file = dirname(base!) + "/" + ref }
        } else {
            guard ref.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }) else {
                throw .invalidArgument(name: "profile", reason: "'\(ref)' is not a profile name or a path")
            }
            let dirs = searchPath()
            guard let found = dirs.map({ $0 + "/" + ref + ".json" }).first(where: { access($0, R_OK) == 0 }) else {
                throw .unknownProfile(name: ref, searched: dirs)
            }
            file = found
        }
        guard !seen.contains(file), seen.count < 8 else {
            throw .invalidProfile(file: file, field: "extends", expected: "no cycle (chain: \(seen.joined(separator: " -> ")))")
        }
        seen.append(file)
        var json = try readJSON(file)
        if let parent = json["extends"] {
            guard let parentRef = parent.stringValue else {
                throw .invalidProfile(file: file, field: "extends", expected: "a profile name or path, got \(parent.typeName)")
            }
            let (_, parentJSON) = try resolve(parentRef, relativeTo: file, seen: &seen)
            json = merge(parentJSON, json)
        }
        return (file, json)
    }

    static func readJSON(_ file: String) throws(SandboxError) -> JSON {
        let text: String
        do {
            text = String(decoding: try FileIO.read(file, limit: 1 << 20), as: UTF8.self)
        } catch {
            throw .hostPath(path: file, reason: "cannot read profile", errno: error)
        }
        do {
            return try JSON.parse(text)
        } catch {
            throw .invalidProfile(file: file, field: "(document)", expected: "valid JSON: \(error)")
        }
    }

    /// Child keys win; nested objects merge; "extends" itself is dropped.
    static func merge(_ parent: JSON, _ child: JSON) -> JSON {
        guard case .object(var members) = parent, case .object(let childMembers) = child else { return child }
        members.removeAll { $0.0 == "extends" }
        for (key, value) in childMembers where key != "extends" {
            if let i = members.firstIndex(where: { $0.0 == key }) {
                if key == "env" || key == "limits" { members[i].1 = merge(members[i].1, value) } else { members[i].1 = value }
            } else {
                members.append((key, value))
            }
        }
        return .object(members)
    }

    // MARK: Decoding

    // Arrays, not sets: a Set<String> costs its metadata and a hash seed at every start-up.
    static let topLevelKeys: [String] = [
        "name", "description", "network", "workspace", "limits", "env", "hostname", "etc", "mounts",
        "host_user", "seccomp", "extends",
    ]
    static let limitKeys: [String] = [
        "timeout_seconds", "memory_bytes", "pids", "nofile", "file_size_bytes", "cpu_seconds", "tmp_bytes",
        "max_output_bytes", "output_kill_bytes",
    ]

    public static func decode(_ json: JSON, file: String) throws(SandboxError) -> Profile {
        func bad(_ field: String, _ expected: String, _ got: JSON?) -> SandboxError {
            .invalidProfile(file: file, field: field, expected: expected + (got.map { ", got \($0.typeName == "a string" ? "\"\($0.stringValue!)\"" : $0.typeName)" } ?? ""))
        }
        guard let top = json.objectValue else { throw bad("(document)", "an object", json) }
        for (key, _) in top where !topLevelKeys.contains(key) {
            throw bad(key, "one of the known fields (\(topLevelKeys.sorted().joined(separator: ", ")))", nil)
        }
        func string(_ key: String, default d: String? = nil) throws(SandboxError) -> String {
            guard let v = json[key] else {
                if let d { return d }
                throw bad(key, "a string", nil)
            }
            guard let s = v.stringValue else { throw bad(key, "a string", v) }
            return s
        }
        func stringList(_ key: String, in obj: JSON?, field: String) throws(SandboxError) -> [String] {
            guard let v = obj?[key] else { return [] }
            guard let items = v.arrayValue else { throw bad(field, "an array of strings", v) }
            var out: [String] = []
            for item in items {
                guard let s = item.stringValue else { throw bad(field, "an array of strings", item) }
                out.append(s)
            }
            return out
        }

        let name = try string("name", default: basename(file).replacingSuffix(".json"))
        let description = try string("description", default: "")
        let networkText = try string("network", default: "none")
        guard let network = Profile.Network(rawValue: networkText) else { throw bad("network", "\"none\" or \"host\"", json["network"]) }
        let workspaceText = try string("workspace", default: "rw")
        guard let workspace = Profile.Access(rawValue: workspaceText) else { throw bad("workspace", "\"rw\" or \"ro\"", json["workspace"]) }
        let hostname = try string("hostname", default: "sbx")
        guard !hostname.isEmpty, hostname.utf8.count <= 64, !hostname.contains("/") else {
            throw bad("hostname", "1 to 64 characters", json["hostname"])
        }

        // limits
        let limitsJSON = json["limits"] ?? .object([])
        guard let limitMembers = limitsJSON.objectValue else { throw bad("limits", "an object", limitsJSON) }
        for (key, _) in limitMembers where !limitKeys.contains(key) {
            throw bad("limits.\(key)", "one of the known limits (\(limitKeys.sorted().joined(separator: ", ")))", nil)
        }
        func size(_ key: String, default d: UInt64?, allowZero: Bool = false) throws(SandboxError) -> UInt64? {
            guard let v = limitsJSON[key] else { return d }
            if case .null = v { return nil }
            let field = "limits.\(key)"
            let parsed: UInt64?
            if let i = v.intValue { parsed = i >= 0 ? UInt64(i) : nil } else if let s = v.stringValue { parsed = parseSize(s) } else { parsed = nil }
            guard let value = parsed, allowZero || value > 0 else {
                throw bad(field, "a \(allowZero ? "non-negative" : "positive") integer or a size like \"512M\"", v)
            }
            return value
        }
        let timeoutJSON = limitsJSON["timeout_seconds"]
        let timeout = timeoutJSON?.doubleValue ?? 120
        guard timeout > 0, timeout <= 86400 * 7 else { throw bad("limits.timeout_seconds", "a number of seconds between 0 and 604800", timeoutJSON) }
        let limits = Profile.Limits(
            timeoutSeconds: timeout,
            memoryBytes: try size("memory_bytes", default: 2 << 30),
            pids: try size("pids", default: 512),
            nofile: try size("nofile", default: 4096)!,
            fileSizeBytes: try size("file_size_bytes", default: nil),
            cpuSeconds: try size("cpu_seconds", default: nil),
            tmpBytes: try size("tmp_bytes", default: 1 << 30)!,
            maxOutputBytes: try size("max_output_bytes", default: 30_000, allowZero: true)!,
            outputKillBytes: try size("output_kill_bytes", default: 1 << 30)!
        )
        if let m = limits.memoryBytes, m < 4 << 20 { throw bad("limits.memory_bytes", "at least 4 MiB", limitsJSON["memory_bytes"]) }

        // env
        var env: [String: String] = [:]
        if let envJSON = json["env"] {
            guard let members = envJSON.objectValue else { throw bad("env", "an object of strings", envJSON) }
            for (k, v) in members {
                guard let s = v.stringValue else { throw bad("env.\(k)", "a string", v) }
                guard isValidEnvName(k) else { throw bad("env.\(k)", "a variable name ([A-Za-z_][A-Za-z0-9_]*)", nil) }
                env[k] = s
            }
        }

        let etc = try stringList("etc", in: json, field: "etc")
        for entry in etc {
            if let problem = etcEntryProblem(entry) { throw bad("etc", problem, .string(entry)) }
        }

        var mounts: [Profile.Mount] = []
        if let mountsJSON = json["mounts"] {
            guard let items = mountsJSON.arrayValue else { throw bad("mounts", "an array of {source, target, writable}", mountsJSON) }
            for (i, item) in items.enumerated() {
                let field = "mounts[\(i)]"
                guard let obj = item.objectValue else { throw bad(field, "an object", item) }
                for (k, _) in obj where !["source", "target", "writable"].contains(k) { throw bad("\(field).\(k)", "source, target or writable", nil) }
                guard let source = item["source"]?.stringValue, source.hasPrefix("/") else { throw bad("\(field).source", "an absolute host path", item["source"]) }
                let target = item["target"]?.stringValue ?? source
                guard target.hasPrefix("/"), !target.split(separator: "/").contains("..") else { throw bad("\(field).target", "an absolute path without '..'", item["target"]) }
                var writable = false
                if let w = item["writable"] {
                    guard let b = w.boolValue else { throw bad("\(field).writable", "a boolean", w) }
                    writable = b
                }
                mounts.append(.init(source: source, target: target, writable: writable))
            }
        }

        var hostUID: UInt32 = 65534, hostGID: UInt32 = 65534
        if let hu = json["host_user"] {
            guard hu.objectValue != nil else { throw bad("host_user", "an object {uid, gid}", hu) }
            for key in ["uid", "gid"] {
                guard let v = hu[key] else { continue }
                guard let i = v.intValue, i > 0, i < 0xFFFF_FFFF else { throw bad("host_user.\(key)", "an unprivileged host id (1 to 4294967294)", v) }
                if key == "uid" { hostUID = UInt32(i) } else { hostGID = UInt32(i) }
            }
        }

        var imports: [String] = [], deny: [String] = []
        if let sc = json["seccomp"] {
            guard let obj = sc.objectValue else { throw bad("seccomp", "an object {import, deny}", sc) }
            for (k, _) in obj where !["import", "deny"].contains(k) { throw bad("seccomp.\(k)", "import or deny", nil) }
            if let imp = sc["import"] {
                if let s = imp.stringValue { imports = [s] } else { imports = try stringList("import", in: sc, field: "seccomp.import") }
            }
            deny = try stringList("deny", in: sc, field: "seccomp.deny")
            imports = imports.map { $0.hasPrefix("/") ? $0 : dirname(file) + "/" + $0 }
        }

        return Profile(
            name: name, description: description, file: file, network: network, workspace: workspace,
            limits: limits, env: env, hostname: hostname, etc: etc, mounts: mounts,
            hostUID: hostUID, hostGID: hostGID, seccompImports: imports, seccompDeny: deny)
    }
}

// MARK: - Small helpers

/// Host /etc entries no profile may expose: credentials, sudo rules, host keys, secrets.
let sensitiveEtcNames: [String] = [
    "shadow", "shadow-", "gshadow", "gshadow-", "passwd-", "group-", ".pwd.lock", "sudoers", "sudoers.d",
    "security", "krb5.keytab", "ipsec.secrets", "wpa_supplicant", "NetworkManager", "letsencrypt", "ppp", "ssh",
]

/// Why an `etc` allow-list entry is refused, or nil. Entries are plain relative paths
/// ("ssl", "ssh/ssh_config"): no "/", ".", ".." or empty parts (so "./shadow" cannot
/// smuggle what "shadow" may not), and nothing sensitive but ssh's client configuration.
func etcEntryProblem(_ entry: String) -> String? {
    let parts = entry.split(separator: "/", omittingEmptySubsequences: false)
    if entry.isEmpty || parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
        return "names relative to /etc without '/', '.', '..' or empty parts"
    }
    if parts[0] == "ssh" {
        return parts.count == 2 && (parts[1] == "ssh_config" || parts[1] == "ssh_config.d") ? nil : "no ssh entry but ssh/ssh_config(.d): host keys stay on the host"
    }
    if parts[0] == "ssl" && parts.count > 1 && parts[1] == "private" { return "not ssl/private: private keys stay on the host" }
    return sensitiveEtcNames.contains(String(parts[0])) ? "no credential or secret files (\(parts[0]) stays on the host)" : nil
}

/// Parses "4096", "512K", "64M", "2G", "1GiB", "1.5G" (binary units).
public func parseSize(_ text: String) -> UInt64? {
    var s = Substring(text.trimmingSpaces())
    guard !s.isEmpty else { return nil }
    var multiplier: Double = 1
    let lower = s.lowercased()
    for (suffix, m) in [("kib", 1024.0), ("mib", 1048576.0), ("gib", 1073741824.0), ("tib", 1099511627776.0),
                        ("kb", 1024.0), ("mb", 1048576.0), ("gb", 1073741824.0), ("tb", 1099511627776.0),
                        ("k", 1024.0), ("m", 1048576.0), ("g", 1073741824.0), ("t", 1099511627776.0), ("b", 1.0)]
    where lower.hasSuffix(suffix) {
        multiplier = m
        s = s.dropLast(suffix.count)
        break
    }
    guard let number = Double(s), number >= 0, number.isFinite else { return nil }
    let value = number * multiplier
    guard value < 1.8e19, value.rounded(.down) == value || multiplier > 1 else { return nil }
    return UInt64(value.rounded(.down))
}

func isValidEnvName(_ s: String) -> Bool {
    guard let first = s.unicodeScalars.first, first == "_" || (first.isASCII && first.properties.isAlphabetic) else { return false }
    return s.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
}

func dirname(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

func basename(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return path }
    return String(path[path.index(after: slash)...])
}

/// The directory holding the running executable (resolved through /proc/self/exe).
public func executableDirectory() -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    return dirname(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
}

extension String {
    func replacingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first?.isWhitespace == true { s = s.dropFirst() }
        while s.last?.isWhitespace == true { s = s.dropLast() }
        return String(s)
    }
}
