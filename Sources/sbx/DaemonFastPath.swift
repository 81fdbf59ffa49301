import ArgumentParser

/// The common daemon command lines (`sbx status`, `sbx branch create|list|info|diff|path|commit|abort`
/// with `--json`, `--socket`, `--from`, `--count`), parsed by hand: swift-argument-parser's set-up
/// is about a millisecond of every call, and a harness calls these in loops. Anything else
/// (help, `--opt=value`, a mistake) returns nil and goes through swift-argument-parser, which
/// owns the help and the error messages.
enum DaemonFastPath {
    static func parse(_ args: [String]) -> (() throws(ExitCode) -> Void)? {
        let command: String
        var rest: ArraySlice<String>
        switch args.first {
        case "status"?: command = "status"; rest = args.dropFirst()
        case "branch"? where args.count >= 2: command = args[1]; rest = args.dropFirst(2)
        default: return nil
        }
        var client = DaemonClient()
        var from = "main", count = 1
        var positional: [String] = []
        while let arg = rest.popFirst() {
            switch arg {
            case "--json": client.json = true
            case "--socket":
                guard let v = rest.popFirst() else { return nil }
                client.socket = v
            case "--from" where command == "create":
                guard let v = rest.popFirst() else { return nil }
                from = v
            case "--count" where command == "create":
                guard let v = rest.popFirst(), let n = Int(v), n >= 1 else { return nil }
                count = n
            default:
                if arg.hasPrefix("-") { return nil }
                positional.append(arg)
            }
        }
        let c = client
        switch (command, positional.first) {
        case ("status", nil): return { () throws(ExitCode) in try StatusCommand.run(c) }
        case ("create", nil): return { () throws(ExitCode) in try BranchCreate.run(from: from, count: count, c) }
        case ("list", nil): return { () throws(ExitCode) in try BranchList.run(c) }
        case let (_, branch?) where positional.count == 1:
            switch command {
            case "info": return { () throws(ExitCode) in try BranchInfo.run(branch, c) }
            case "diff": return { () throws(ExitCode) in try BranchDiff.run(branch, c) }
            case "path": return { () throws(ExitCode) in try BranchPath.run(branch, c) }
            case "commit": return { () throws(ExitCode) in try BranchCommit.run(branch, c) }
            case "abort": return { () throws(ExitCode) in try BranchAbort.run(branch, c) }
            default: return nil
            }
        default: return nil
        }
    }
}
