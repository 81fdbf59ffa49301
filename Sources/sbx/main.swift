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
        subcommands: [Run.self, BranchCommand.self, StatusCommand.self]
    )
}

/// Prints exactly one line to stderr: control characters from user input are escaped,
/// so a value with a newline cannot forge a second "sbx:" line.
func complain(_ message: String) {
    var line = "sbx: "
    for scalar in message.unicodeScalars {
        switch scalar {
        case "\n": line += "\\n"
        case "\r": line += "\\r"
        case "\t": line += "\\t"
        case let c where c.value < 0x20 || c.value == 0x7f: line += "\\x" + String(c.value, radix: 16)
        default: line.unicodeScalars.append(scalar)
        }
    }
    line += "\n"
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
// With 0, 1 or 2 closed, the next file we open would take its number and be handed to the
// jail as its stdio (a host file outside the jail): put /dev/null there first.
for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
    let null = open("/dev/null", O_RDWR)
    if null >= 0 && null != fd { dup2(null, fd); close(null) }
}
let arguments = Array(CommandLine.arguments.dropFirst())
if let options = RunOptions.fastParse(arguments) {
    exit(options.execute())
}
if let action = DaemonFastPath.parse(arguments) {
    do throws(ExitCode) { try action() } catch { exit(error.rawValue) }
    exit(0)
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
