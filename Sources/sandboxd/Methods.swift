import BranchFS
import SBXJSON
import SandboxProtocol

#if canImport(Glibc)
import Glibc
#endif

/// The methods of DESIGN §6 that sandboxd answers so far: the branch methods over BranchFS, and
/// `status`. Each checks its params, makes one BranchFS call (blocking; BranchFS locks inside),
/// and shapes the result.
struct Methods: Sendable {
    let branches: BranchFS
    let counters: Counters
    let socket: String
    /// Monotonic seconds at start, for `uptime_ms`.
    let startedAt: Double

    func call(_ request: Request) -> Result<JSON, RPCError> {
        guard let method = Method(rawValue: request.method) else { return .failure(.methodNotFound(request.method)) }
        var params = Params(request.params, method: request.method)
        return Result { () throws(RPCError) in try run(method, &params) }
    }

    private func run(_ method: Method, _ params: inout Params) throws(RPCError) -> JSON {
        switch method {
        case .branchCreate:
            let from = try params.optionalString("from") ?? BranchStore.mainID
            let count = try params.optionalInt("count", in: BranchStore.siblingCounts) ?? 1
            try params.finish()
            let made = try fs { () throws(BranchError) in try branches.create(from: from, count: count) }
            counters.add(.creates, made.count)
            return .object([("branches", .array(made.map { .object([("id", .string($0.id)), ("path", .string(branches.path(of: $0.id)))]) }))])

        case .branchList:
            try params.finish()
            let all = branches.list()
            return .object([("branches", .array(all.map { .object(BranchWire.branch($0, among: all, path: branches.path(of: $0.id))) }))])

        case .branchInfo:
            let id = try params.string("branch")
            try params.finish()
            let branch = try fs { () throws(BranchError) in try branches.info(id) }
            let external = try fs { () throws(BranchError) in try branches.externalChanges(id) }
            let all = branches.list()
            let children = all.filter { $0.parent == id }.map { JSON.string($0.id) }
            return .object(BranchWire.branch(branch, among: all, path: branches.path(of: id)) + [
                ("children", .array(children)), ("external_changes", .array(external.map { .string($0) })),
            ])

        case .branchDiff:
            let id = try params.string("branch")
            try params.finish()
            let changes = try fs { () throws(BranchError) in try branches.diff(id) }
            return .object([("changes", .array(changes.map(BranchWire.change)))])

        case .branchCommit:
            let id = try params.string("branch")
            try params.finish()
            do throws(RPCError) {
                let r = try fs { () throws(BranchError) in try branches.commit(id) }
                counters.add(.commits)
                return .object([
                    ("committed", .string(r.committed)), ("into", .string(r.into)), ("epoch", .int(Int64(r.epoch))),
                    ("invalidated", .array(r.invalidated.map { .string($0) })), ("changes", .int(Int64(r.changes))),
                ])
            } catch {
                if error.kind == .conflict { counters.add(.conflicts) }
                throw error
            }

        case .branchAbort:
            let id = try params.string("branch")
            try params.finish()
            try fs { () throws(BranchError) in try branches.abort(id) }
            counters.add(.aborts)
            return .object([("aborted", .string(id))])

        case .status:
            try params.finish()
            return status()
        }
    }

    private func status() -> JSON {
        let all = branches.list()
        var byState: [(String, JSON)] = [("total", .int(Int64(all.count)))]
        for state in [Branch.State.active, .committed, .aborted, .invalidated] {
            byState.append((state.rawValue, .int(Int64(all.filter { $0.state == state }.count))))
        }
        byState.append(("frozen", .int(Int64(all.filter { b in all.contains { $0.parent == b.id && $0.state == .active } }.count))))
        return .object([
            ("version", .string(SandboxVersion.current)),
            ("pid", .int(Int64(getpid()))),
            ("workspace", .string(branches.workspace)),
            ("state", .string(branches.stateDirectory)),
            ("mount", .string(branches.mountPoint)),
            ("socket", .string(socket)),
            ("branches", .object(byState)),
            ("jails", .int(0)),
            ("shells", .int(0)),
            ("counters", counters.json),
            ("uptime_ms", .int(Int64((monotonicSeconds() - startedAt) * 1000))),
        ])
    }

    /// Runs a BranchFS call, its refusal turned into the protocol's error.
    private func fs<T>(_ body: () throws(BranchError) -> T) throws(RPCError) -> T {
        do throws(BranchError) { return try body() } catch { throw RPCError(error) }
    }
}
