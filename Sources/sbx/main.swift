import ArgumentParser
import SBXJSON
import Sandbox

#if canImport(Glibc)
import Glibc
#endif

/// sbx: run untrusted commands isolated, bounded and reversible.
struct SBX: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sbx",
        abstract: "Run tool calls for AI agents in jails: isolated, bounded, reversible.",
        subcommands: [Run.self]
    )
}

/// Prints one line to stderr.
func complain(_ message: String) {
    var line = "sbx: " + message
    if !line.hasSuffix("\n") { line += "\n" }
    _ = line.withCString { write(2, $0, strlen($0)) }
}

func printOut(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    _ = line.withCString { write(1, $0, strlen($0)) }
}

// `sbx run` reports its own failures with 125 (DESIGN §7); other commands use 2 for usage.
// A closed stdout must be an EPIPE we can act on (stop the jail), not our death.
signal(SIGPIPE, SIG_IGN)
let arguments = Array(CommandLine.arguments.dropFirst())
if let options = RunOptions.fastParse(arguments) {
    exit(options.execute())
}
do {
    var command = try SBX.parseAsRoot(arguments)
    try command.run()
} catch let code as ExitCode {
    exit(code.rawValue)
} catch {
    let isRun = arguments.first == "run"
    let code = SBX.exitCode(for: error)
    if code == .success {
        // --help, --version
        printOut(SBX.fullMessage(for: error))
        exit(0)
    }
    let message = SBX.message(for: error)
    complain(message.split(separator: "\n").first.map(String.init) ?? message)
    exit(isRun ? 125 : (code == .validationFailure ? 2 : code.rawValue))
}
