import CSeccomp
import SBXJSON
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Imports a Docker/OCI seccomp profile (the JSON format of moby's
/// `profiles/seccomp/default.json` and of the OCI runtime spec's
/// `linux.seccomp`) as a second filter, stacked on the built-in one: the
/// kernel applies the stricter answer of the two.
///
/// The jail holds no capabilities, so rules that `includes.caps` need are
/// skipped and rules that `excludes.caps` apply. Architectures are matched
/// against the native one.
extension Seccomp {
    public static func importOCI(file: String) throws(SandboxError) -> SeccompProgram {
        let json = try ProfileLoader.readJSON(file)
        return try importOCI(json, file: file)
    }

    static func importOCI(_ json: JSON, file: String) throws(SandboxError) -> SeccompProgram {
        func bad(_ field: String, _ expected: String) -> SandboxError {
            .invalidProfile(file: file, field: field, expected: expected)
        }
        guard json.objectValue != nil else { throw bad("(document)", "an OCI seccomp object") }
        let defaultErrno = json["defaultErrnoRet"]?.intValue ?? Int64(EPERM)
        guard let defaultActionName = json["defaultAction"]?.stringValue else { throw bad("defaultAction", "an action name like SCMP_ACT_ERRNO") }
        let defaultAction = try action(defaultActionName, errno: defaultErrno, field: "defaultAction", file: file)
        let ctx = try SeccompContext(defaultAction: defaultAction)
        let native = nativeArchNames

        for (i, rule) in (json["syscalls"]?.arrayValue ?? []).enumerated() {
            let field = "syscalls[\(i)]"
            var names: [String] = []
            if let list = rule["names"]?.arrayValue { names = list.compactMap(\.stringValue) }
            if let one = rule["name"]?.stringValue { names.append(one) }
            guard !names.isEmpty else { throw bad("\(field).names", "a list of syscall names") }
            guard let actionName = rule["action"]?.stringValue else { throw bad("\(field).action", "an action name") }
            let ruleAction = try action(actionName, errno: rule["errnoRet"]?.intValue ?? Int64(EPERM), field: "\(field).action", file: file)

            if let caps = rule["includes"]?["caps"]?.arrayValue, !caps.isEmpty { continue }
            if let arches = rule["includes"]?["arches"]?.arrayValue, !arches.isEmpty,
               !arches.contains(where: { native.contains($0.stringValue ?? "") }) { continue }
            if let arches = rule["excludes"]?["arches"]?.arrayValue,
               arches.contains(where: { native.contains($0.stringValue ?? "") }) { continue }

            var cmps: [scmp_arg_cmp] = []
            for (j, arg) in (rule["args"]?.arrayValue ?? []).enumerated() {
                let af = "\(field).args[\(j)]"
                guard let index = arg["index"]?.intValue, (0...5).contains(index) else { throw bad("\(af).index", "0 to 5") }
                guard let value = arg["value"]?.intValue else { throw bad("\(af).value", "an integer") }
                let valueTwo = arg["valueTwo"]?.intValue ?? 0
                guard let opName = arg["op"]?.stringValue, let op = comparison(opName) else {
                    throw bad("\(af).op", "one of SCMP_CMP_NE, _LT, _LE, _EQ, _GE, _GT, _MASKED_EQ")
                }
                cmps.append(cmp(UInt32(index), op, UInt64(bitPattern: value), UInt64(bitPattern: valueTwo)))
            }
            if ruleAction == defaultAction { continue }
            for name in names {
                let nr = seccomp_syscall_resolve_name(name)
                if nr == __NR_SCMP_ERROR { continue }  // not on this architecture
                try ctx.add(ruleAction, nr, cmps, ignoreExisting: true)
            }
        }
        return try ctx.export()
    }

    static var nativeArchNames: [String] {
        #if arch(x86_64)
        return ["SCMP_ARCH_X86_64", "amd64", "x86_64"]
        #elseif arch(arm64)
        return ["SCMP_ARCH_AARCH64", "arm64", "aarch64"]
        #else
        return []
        #endif
    }

    static func action(_ name: String, errno: Int64, field: String, file: String) throws(SandboxError) -> UInt32 {
        switch name {
        case "SCMP_ACT_ALLOW": return sbx_scmp_act_allow()
        case "SCMP_ACT_ERRNO":
            guard (0...4095).contains(errno) else { throw .invalidProfile(file: file, field: field, expected: "errnoRet between 0 and 4095") }
            return sbx_scmp_act_errno(UInt16(errno))
        case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS": return sbx_scmp_act_kill_process()
        case "SCMP_ACT_TRAP": return sbx_scmp_act_trap()
        case "SCMP_ACT_LOG": return sbx_scmp_act_log()
        default:
            throw .invalidProfile(file: file, field: field,
                                  expected: "SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL(_PROCESS|_THREAD), SCMP_ACT_TRAP or SCMP_ACT_LOG, got \"\(name)\"")
        }
    }

    static func comparison(_ name: String) -> scmp_compare? {
        switch name {
        case "SCMP_CMP_NE": return SCMP_CMP_NE
        case "SCMP_CMP_LT": return SCMP_CMP_LT
        case "SCMP_CMP_LE": return SCMP_CMP_LE
        case "SCMP_CMP_EQ": return SCMP_CMP_EQ
        case "SCMP_CMP_GE": return SCMP_CMP_GE
        case "SCMP_CMP_GT": return SCMP_CMP_GT
        case "SCMP_CMP_MASKED_EQ": return SCMP_CMP_MASKED_EQ
        default: return nil
        }
    }
}
