import SBXJSON

#if canImport(Glibc)
import Glibc
#endif

/// One copy-on-write view of its parent (DESIGN §2, §5).
public struct Branch: Equatable, Sendable {
    public enum State: String, Sendable { case active, committed, aborted, invalidated }

    public let id: String
    /// nil only for `main`, the workspace itself.
    public let parent: String?
    /// The parent's epoch when this branch was forked.
    public let forkEpoch: UInt64
    /// `CLOCK_REALTIME` at the fork, in nanoseconds since the epoch: a workspace path with a
    /// later ctime changed after the fork (see `ExternalChanges`). nil for `main` and for
    /// records written before fork times were kept: their commits are not checked.
    public let forkTime: Int64?
    /// Bumped by every commit into this branch.
    public internal(set) var epoch: UInt64
    public internal(set) var state: State
    /// For a committed branch: the epoch it produced in its parent. For a parent: who committed last.
    public internal(set) var lastCommitFrom: String?
    /// For an invalidated branch: the sibling whose commit invalidated it.
    public internal(set) var invalidatedBy: String?
}

/// Why a branch operation was refused; `kind` is the protocol's `data.kind` (DESIGN §6).
public enum BranchError: Error, Equatable, CustomStringConvertible {
    case notFound(String)
    /// The branch is not active (committed, aborted or invalidated).
    case notActive(String, Branch.State)
    /// Its parent moved on since the fork: another branch committed first.
    case conflict(String, winner: String?)
    /// Paths the commit carries were changed in the workspace by something other than BranchFS
    /// since the fork: committing would overwrite or undo those changes.
    case externalChange(String, paths: [String])
    /// A branch with live children is frozen: it cannot commit (nor be written).
    case frozen(String, children: [String])
    case invalidRequest(String)
    case io(String, errno: Int32)

    public var kind: String {
        switch self {
        case .notFound: return "not_found"
        case .notActive(_, .invalidated): return "stale"
        case .notActive: return "invalid_request"
        case .conflict, .externalChange: return "conflict"
        case .frozen: return "frozen"
        case .invalidRequest: return "invalid_request"
        case .io: return "internal"
        }
    }

    public var description: String {
        switch self {
        case let .notFound(id): return "no branch '\(id)'"
        case let .notActive(id, state): return "branch '\(id)' is \(state.rawValue)"
        case let .conflict(id, winner):
            return "branch '\(id)' cannot commit: its parent changed since the fork" + (winner.map { " (branch '\($0)' committed first)" } ?? "")
        case let .externalChange(id, paths):
            let shown = paths.prefix(5).joined(separator: ", ") + (paths.count > 5 ? " and \(paths.count - 5) more" : "")
            return "branch '\(id)' cannot commit: \(paths.count) of its paths changed in the workspace outside BranchFS since the fork (\(shown))"
        case let .frozen(id, children): return "branch '\(id)' has live children (\(children.joined(separator: ", "))): it is frozen"
        case let .invalidRequest(reason): return reason
        case let .io(what, e): return "\(what): \(String(cString: strerror(e))) (errno \(e))"
        }
    }
}

/// The branch registry: ids, parents, epochs and states, with the rules of DESIGN §5.
/// Forking copies nothing (a record); the first commit into a parent wins and every sibling
/// forked from the same parent state is invalidated. Every change is persisted (see
/// "persistence" below), so the registry survives a daemon restart.
///
/// This is the pure-logic core of BranchFS: the delta store and the FUSE server (issue 3)
/// consult it for what each view may do; it knows nothing of files or jails.
public final class BranchStore {
    public static let mainID = "main"
    private(set) var branches: [String: Branch] = [:]
    private var order: [String] = []
    let file: String?

    /// Opens (or starts) the registry in `stateDirectory/branches.json`; nil keeps it in memory.
    public init(stateDirectory: String?) throws(BranchError) {
        file = stateDirectory.map { $0 + "/branches.json" }
        branches[Self.mainID] = Branch(id: Self.mainID, parent: nil, forkEpoch: 0, forkTime: nil, epoch: 0, state: .active)
        order = [Self.mainID]
        try load()
    }

    public func list() -> [Branch] { order.compactMap { branches[$0] } }

    public func info(_ id: String) throws(BranchError) -> Branch {
        guard let b = branches[id] else { throw .notFound(id) }
        return b
    }

    /// Active branches forked from `id`.
    public func liveChildren(of id: String) -> [Branch] {
        list().filter { $0.parent == id && $0.state == .active }
    }

    /// A branch with live children is frozen: its view is read-only and it cannot commit.
    public func isFrozen(_ id: String) -> Bool { !liveChildren(of: id).isEmpty }

    /// How many siblings one fork may make.
    public static let siblingCounts = 1...256

    /// Forks `count` siblings from `parent` (O(1) each: a record, nothing copied).
    public func create(from parent: String = BranchStore.mainID, count: Int = 1) throws(BranchError) -> [Branch] {
        guard Self.siblingCounts.contains(count) else { throw .invalidRequest("count must be between \(Self.siblingCounts.lowerBound) and \(Self.siblingCounts.upperBound), got \(count)") }
        let p = try info(parent)
        guard p.state == .active else { throw .notActive(parent, p.state) }
        var made: [Branch] = []
        let now = ExternalChanges.now()
        for _ in 0..<count {
            let b = Branch(id: newID(), parent: parent, forkEpoch: p.epoch, forkTime: now, epoch: 0, state: .active)
            branches[b.id] = b
            order.append(b.id)
            made.append(b)
        }
        // Not fsynced (a fork costs ~1 ms less): rename is atomic against a killed daemon, and
        // against power loss a branch is no safer than its own writes, which are not fsynced
        // either until its commit.
        try save(made.map(\.id), durable: false)
        return made
    }

    /// Commits `id` into its parent. First commit wins: it succeeds only if the parent has not
    /// moved since the fork; it then bumps the parent's epoch and invalidates every other live
    /// child of the parent (and their descendants).
    /// `durable: false` appends without fsync: BranchFS fsyncs the log (`logFile`) together
    /// with the directories the commit changed; its journal covers the gap.
    public func commit(_ id: String, durable: Bool = true) throws(BranchError) -> (epoch: UInt64, invalidated: [String]) {
        try checkCommit(id)
        var b = try info(id)
        var p = try info(b.parent!)
        p.epoch += 1
        p.lastCommitFrom = id
        branches[p.id] = p
        b.state = .committed
        b.epoch = p.epoch
        branches[id] = b
        var invalidated: [String] = []
        for sibling in liveChildren(of: p.id) {
            invalidated += try invalidate(sibling.id, by: id, saving: false)
        }
        try save([id, p.id] + invalidated, durable: durable)
        return (p.epoch, invalidated)
    }

    /// Refuses a commit that `commit` would refuse, changing nothing, except that a branch
    /// whose parent moved on is marked invalidated (it can never commit again).
    func checkCommit(_ id: String) throws(BranchError) {
        guard id != Self.mainID else { throw .invalidRequest("main is the workspace: it has nothing to commit into") }
        let b = try info(id)
        guard b.state == .active else {
            if b.state == .invalidated { throw .conflict(id, winner: b.invalidatedBy) }
            throw .notActive(id, b.state)
        }
        let children = liveChildren(of: id)
        guard children.isEmpty else { throw .frozen(id, children: children.map(\.id)) }
        let p = try info(b.parent!)
        guard p.state == .active else { throw .notActive(p.id, p.state) }
        guard p.epoch == b.forkEpoch else {
            try invalidate(id, by: p.lastCommitFrom)
            throw .conflict(id, winner: p.lastCommitFrom)
        }
    }

    /// Throws a branch away, with everything forked from it.
    /// Returns the ids it aborted: `id` and its live descendants.
    @discardableResult
    public func abort(_ id: String) throws(BranchError) -> [String] {
        guard id != Self.mainID else { throw .invalidRequest("main is the workspace: it cannot be aborted") }
        let b = try info(id)
        guard b.state == .active else { throw .notActive(id, b.state) }
        let gone = ([id] + descendants(of: id)).filter { branches[$0]?.state == .active }
        for d in gone { branches[d]?.state = .aborted }
        try save(gone)
        return gone
    }

    /// Marks a branch and its live descendants invalidated; returns their ids.
    @discardableResult
    func invalidate(_ id: String, by winner: String?, saving: Bool = true) throws(BranchError) -> [String] {
        var done: [String] = []
        for d in [id] + descendants(of: id) where branches[d]?.state == .active {
            branches[d]?.state = .invalidated
            branches[d]?.invalidatedBy = winner
            done.append(d)
        }
        if saving { try save(done) }
        return done
    }

    func descendants(of id: String) -> [String] {
        var out: [String] = []
        var frontier = [id]
        while let next = frontier.popLast() {
            for b in list() where b.parent == next {
                out.append(b.id)
                frontier.append(b.id)
            }
        }
        return out
    }

    func newID() -> String {
        while true {
            let bytes = (0..<6).map { _ in UInt8.random(in: 0...255) }
            let id = "b" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
            if branches[id] == nil { return id }
        }
    }

    // MARK: - persistence
    //
    // A snapshot (`branches.json`, replaced atomically and durably) plus a log of upserted
    // records (`branches.log`, one JSON object per line, appended). A fork appends its records
    // without fsync, so its cost does not grow with the history; commit and abort append and
    // fsync. A torn tail line (power loss mid-append) ends the log: what precedes it is intact,
    // because appends never rewrite. Every `compactEvery` lines the log folds into the snapshot.

    static let compactEvery = 512
    var logFile: String? { file.map { $0.dropLast(".json".count) + ".log" } }
    private var logLines = 0

    func record(_ b: Branch) -> JSON {
        .object([
            ("id", .string(b.id)), ("parent", b.parent.map { .string($0) } ?? .null),
            ("fork_epoch", .int(Int64(b.forkEpoch))), ("fork_time_ns", b.forkTime.map { .int($0) } ?? .null),
            ("epoch", .int(Int64(b.epoch))), ("state", .string(b.state.rawValue)),
            ("last_commit_from", b.lastCommitFrom.map { .string($0) } ?? .null),
            ("invalidated_by", b.invalidatedBy.map { .string($0) } ?? .null),
        ])
    }

    func json() -> JSON {
        .object([("version", .int(1)), ("branches", .array(list().map(record)))])
    }

    /// Persists the records of `ids`: appended to the log, fsynced when `durable`.
    func save(_ ids: [String], durable: Bool = true) throws(BranchError) {
        guard let logFile else { return }
        if logLines >= Self.compactEvery { return try compact() }
        let text = ids.compactMap { branches[$0] }.map { record($0).text + "\n" }.joined()
        let fd = open(logFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io("open \(logFile)", errno: errno) }
        let ok = text.withCString { write(fd, $0, strlen($0)) } == text.utf8.count && (!durable || fsync(fd) == 0)
        let e = errno
        close(fd)
        guard ok else { throw .io("append to \(logFile)", errno: e) }
        if logLines == 0 { syncDirectory() } // the log file itself is new
        logLines += ids.count
    }

    /// Folds the log into a new snapshot (temp, fsync, rename, fsync of the directory), then
    /// empties the log. A crash in between only replays records the snapshot already has.
    func compact() throws(BranchError) {
        guard let file, let logFile else { return }
        let tmp = file + ".tmp"
        let text = json().text + "\n"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io("create \(tmp)", errno: errno) }
        let ok = text.withCString { write(fd, $0, strlen($0)) } == text.utf8.count && fsync(fd) == 0
        let e = errno
        close(fd)
        guard ok else { unlink(tmp); throw .io("write \(tmp)", errno: e) }
        guard rename(tmp, file) == 0 else { throw .io("rename \(tmp)", errno: errno) }
        syncDirectory()
        let log = open(logFile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if log >= 0 { fsync(log); close(log) }
        logLines = 0
    }

    private func syncDirectory() {
        guard let file else { return }
        let dir = open(String(file[..<file.lastIndex(of: "/")!]), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); close(dir) }
    }

    /// Upserts one record; nil when it is not a well-formed branch record.
    func apply(_ item: JSON) -> Bool {
        guard let id = item["id"]?.stringValue, let stateText = item["state"]?.stringValue,
              let state = Branch.State(rawValue: stateText),
              let fork = item["fork_epoch"]?.intValue, let epoch = item["epoch"]?.intValue else { return false }
        if branches[id] == nil { order.append(id) }
        // A record from before fork times were kept has none: its fork time is unknown, and
        // its commit is not checked for external changes.
        branches[id] = Branch(id: id, parent: item["parent"]?.stringValue, forkEpoch: UInt64(fork),
                              forkTime: item["fork_time_ns"]?.intValue, epoch: UInt64(epoch),
                              state: state, lastCommitFrom: item["last_commit_from"]?.stringValue,
                              invalidatedBy: item["invalidated_by"]?.stringValue)
        return true
    }

    func load() throws(BranchError) {
        guard let file, let logFile else { return }
        if var bytes = Overlay.readFile(file) {
            let parsed: JSON
            do { parsed = try JSON.parse(bytes: &bytes) } catch { throw .invalidRequest("\(file): \(error)") }
            guard let items = parsed["branches"]?.arrayValue else { throw .invalidRequest("\(file): no branches array") }
            branches = [:]
            order = []
            for item in items where !apply(item) { throw .invalidRequest("\(file): malformed branch record") }
        }
        if let log = Overlay.readFile(logFile) {
            for line in log.split(separator: UInt8(ascii: "\n")) {
                var bytes = Array(line)
                guard let item = try? JSON.parse(bytes: &bytes), apply(item) else { break } // a torn tail
                logLines += 1
            }
        }
        guard branches[Self.mainID] != nil else { throw .invalidRequest("\(file): no main branch") }
        if logLines > 0 { try compact() } // also drops a torn tail
    }
}
