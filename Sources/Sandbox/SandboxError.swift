import SystemPackage

/// Everything that can go wrong before or around a jailed command, each case
/// precise enough to act on without reading the source.
public enum SandboxError: Error, Equatable, CustomStringConvertible {
    /// A profile name that matches no file on the search path.
    case unknownProfile(name: String, searched: [String])
    /// A profile file that exists but is wrong: which file, which field, what was expected.
    case invalidProfile(file: String, field: String, expected: String)
    /// A bad argument or limit (the CLI's or a protocol caller's).
    case invalidArgument(name: String, reason: String)
    /// A host path the jail needs (workspace, bind source, sbx-init) is missing or unusable.
    case hostPath(path: String, reason: String, errno: Errno?)
    /// A cgroup operation failed.
    case cgroup(operation: String, path: String, errno: Errno)
    /// libseccomp refused a rule or the export failed.
    case seccomp(reason: String, errno: Errno?)
    /// The jail could not be set up; `step` says which launch step failed.
    case setup(step: String, errno: Errno)
    /// A syscall in the supervisor failed.
    case system(call: String, errno: Errno)

    public var description: String {
        switch self {
        case let .unknownProfile(name, searched):
            return "unknown profile '\(name)' (looked for \(searched.joined(separator: ", ")))"
        case let .invalidProfile(file, field, expected):
            return "profile \(file): field '\(field)': expected \(expected)"
        case let .invalidArgument(name, reason):
            return "\(name): \(reason)"
        case let .hostPath(path, reason, errno):
            return "\(path): \(reason)" + (errno.map { " (\($0.sbxDescription))" } ?? "")
        case let .cgroup(operation, path, errno):
            return "cgroup \(operation) \(path): \(errno.sbxDescription)"
        case let .seccomp(reason, errno):
            return "seccomp: \(reason)" + (errno.map { " (\($0.sbxDescription))" } ?? "")
        case let .setup(step, errno):
            return "jail setup failed at \(step): \(errno.sbxDescription)"
        case let .system(call, errno):
            return "\(call): \(errno.sbxDescription)"
        }
    }
}

extension Errno {
    /// "Operation not permitted (EPERM, errno 1)"-style text.
    var sbxDescription: String { "\(self) (errno \(rawValue))" }
}
