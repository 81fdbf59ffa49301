import BranchFS
import SBXJSON
import SandboxProtocol

/// How BranchFS values look on the wire.
enum BranchWire {
    /// The members of a branch object as `branch.list` and `branch.info` show it. `frozen`: it has
    /// live children, so its view is read-only and it cannot commit. `all` is the registry, to find those children.
    static func branch(_ b: Branch, among all: [Branch], path: String) -> [(String, JSON)] {
        [
            ("id", .string(b.id)),
            ("parent", b.parent.map { .string($0) } ?? .null),
            ("state", .string(b.state.rawValue)),
            ("fork_epoch", .int(Int64(b.forkEpoch))),
            ("epoch", .int(Int64(b.epoch))),
            ("frozen", .bool(all.contains { $0.parent == b.id && $0.state == .active })),
            ("path", .string(path)),
            ("last_commit_from", b.lastCommitFrom.map { .string($0) } ?? .null),
            ("invalidated_by", b.invalidatedBy.map { .string($0) } ?? .null),
        ]
    }

    static func change(_ c: BranchChange) -> JSON {
        .object([("path", .string(c.path)), ("change", .string(c.kind.rawValue))])
    }
}

extension RPCError {
    /// A BranchFS refusal: its `kind`, its message, and in `data` the branch it is about plus
    /// what a client acts on (the winner of a conflict or the paths changed outside BranchFS
    /// that refused a commit, the children that freeze a branch).
    init(_ error: BranchError) {
        let kind = ErrorKind(rawValue: error.kind) ?? .internal
        var details: [(String, JSON)] = []
        switch error {
        case .notFound(let id): details = [("branch", .string(id))]
        case let .notActive(id, state): details = [("branch", .string(id)), ("state", .string(state.rawValue))]
        case let .conflict(id, winner): details = [("branch", .string(id)), ("winner", winner.map { .string($0) } ?? .null)]
        case let .externalChange(id, paths):
            details = [("branch", .string(id)), ("external_changes", .array(paths.map { .string($0) }))]
        case let .frozen(id, children): details = [("branch", .string(id)), ("children", .array(children.map { .string($0) }))]
        case .io(_, let e): details = [("errno", .int(Int64(e)))]
        default: break
        }
        self.init(kind, error.description, details: details)
    }
}
