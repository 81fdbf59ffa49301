import ArgumentParser
import SBXJSON
import SandboxProtocol

/// `sbx branch ...`: copy-on-write branches of sandboxd's workspace.
struct BranchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "branch",
        abstract: "Create, inspect, commit and abort copy-on-write branches of sandboxd's workspace.",
        discussion: """
            Exit status: 0 ok; 1 error (one 'sbx:' line on stderr, or the error object on stdout with --json); \
            2 usage; 3 another branch won: a commit refused because a sibling committed first (conflict), \
            or a branch invalidated by such a commit (stale); also a commit refused because the workspace \
            changed outside the branches at its paths since the fork (conflict, naming the paths).
            """,
        subcommands: [BranchCreate.self, BranchList.self, BranchInfo.self, BranchDiff.self, BranchPath.self,
                      BranchCommit.self, BranchAbort.self]
    )
}

struct BranchCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Fork branches; prints one 'ID<TAB>PATH' line per branch.")

    @Option(name: .long, help: "The parent branch.")
    var from: String = "main"

    @Option(name: .long, help: "How many sibling branches to fork.")
    var count: Int = 1

    @OptionGroup var daemon: DaemonOptions

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1, got \(count)") }
    }

    func run() throws { try Self.run(from: from, count: count, daemon.client) }

    static func run(from: String, count: Int, _ client: DaemonClient) throws(ExitCode) {
        let result = try client.call(.branchCreate, [("from", .string(from)), ("count", .int(Int64(count)))])
        client.show(result) {
            for b in result["branches"]?.arrayValue ?? [] { printOut(b["id"].display + "\t" + b["path"].display) }
        }
    }
}

struct BranchList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List every branch with its state.")

    @OptionGroup var daemon: DaemonOptions

    func run() throws { try Self.run(daemon.client) }

    static func run(_ client: DaemonClient) throws(ExitCode) {
        let result = try client.call(.branchList)
        client.show(result) {
            var rows = [["ID", "PARENT", "STATE", "EPOCH", "FORK", "NOTE"]]
            for b in result["branches"]?.arrayValue ?? [] {
                var note = b["frozen"] == .bool(true) ? "frozen" : ""
                if let winner = b["invalidated_by"]?.stringValue { note = "invalidated by \(winner)" }
                rows.append([b["id"].display, b["parent"].display, b["state"].display, b["epoch"].display,
                             b["fork_epoch"].display, note])
            }
            printOut(table(rows))
        }
    }
}

struct BranchInfo: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show one branch.")

    @OptionGroup var target: OneBranch

    func run() throws { try Self.run(target.branch, target.daemon.client) }

    static func run(_ branch: String, _ client: DaemonClient) throws(ExitCode) {
        let result = try client.call(.branchInfo, [("branch", .string(branch))])
        client.show(result) {
            let children = result["children"]?.arrayValue?.map(\.display) ?? []
            let external = result["external_changes"]?.arrayValue?.map(\.display) ?? []
            var rows = [
                ["id", result["id"].display], ["parent", result["parent"].display], ["state", result["state"].display],
                ["fork_epoch", result["fork_epoch"].display], ["epoch", result["epoch"].display],
                ["frozen", result["frozen"].display], ["children", children.isEmpty ? "-" : children.joined(separator: " ")],
                ["path", result["path"].display],
            ]
            for key in ["last_commit_from", "invalidated_by"] where result[key]?.stringValue != nil {
                rows.append([key, result[key].display])
            }
            if !external.isEmpty { rows.append(["external_changes", external.joined(separator: " ")]) }
            printOut(table(rows))
        }
    }
}

struct BranchDiff: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff", abstract: "Paths the branch changed relative to its parent: 'A path', 'M path', 'D path'.")

    @OptionGroup var target: OneBranch

    func run() throws { try Self.run(target.branch, target.daemon.client) }

    static func run(_ branch: String, _ client: DaemonClient) throws(ExitCode) {
        let result = try client.call(.branchDiff, [("branch", .string(branch))])
        client.show(result) {
            let letters = ["added": "A", "modified": "M", "deleted": "D"]
            for c in result["changes"]?.arrayValue ?? [] {
                printOut((letters[c["change"].display] ?? "?") + " " + c["path"].display)
            }
        }
    }
}

struct BranchPath: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "path", abstract: "Print the host directory where the branch is read and written.")

    @OptionGroup var target: OneBranch

    func run() throws { try Self.run(target.branch, target.daemon.client) }

    static func run(_ branch: String, _ client: DaemonClient) throws(ExitCode) {
        let result = try client.call(.branchInfo, [("branch", .string(branch))])
        client.show(.object([("path", result["path"] ?? .null)])) { printOut(result["path"].display) }
    }
}

struct BranchCommit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "commit",
        abstract: "Commit the branch into its parent; the first commit wins.",
        discussion: """
            Exit status 3 when a sibling committed first (the message names the winner) or when the workspace \
            changed outside the branches since the fork at paths the commit carries (the message names them).
            """)

    @OptionGroup var target: OneBranch

    func run() throws { try Self.run(target.branch, target.daemon.client) }

    static func run(_ branch: String, _ client: DaemonClient) throws(ExitCode) {
        let result = try client.call(.branchCommit, [("branch", .string(branch))])
        client.show(result) {
            let invalidated = result["invalidated"]?.arrayValue?.map(\.display) ?? []
            printOut("committed \(result["committed"].display) into \(result["into"].display) (epoch \(result["epoch"].display))"
                + (invalidated.isEmpty ? "" : "; invalidated " + invalidated.joined(separator: " ")))
        }
    }
}

struct BranchAbort: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "abort", abstract: "Throw the branch away, with every branch forked from it.")

    @OptionGroup var target: OneBranch

    func run() throws { try Self.run(target.branch, target.daemon.client) }

    static func run(_ branch: String, _ client: DaemonClient) throws(ExitCode) {
        let result = try client.call(.branchAbort, [("branch", .string(branch))])
        client.show(result) { printOut("aborted \(result["aborted"].display)") }
    }
}

/// The argument and options of the commands that act on one branch.
struct OneBranch: ParsableArguments {
    @Argument(help: "The branch id.")
    var branch: String

    @OptionGroup var daemon: DaemonOptions

}
