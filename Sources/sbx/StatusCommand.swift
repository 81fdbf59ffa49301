import ArgumentParser
import SBXJSON
import SandboxProtocol

/// `sbx status`: is sandboxd up, where does it work, what has it done.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show sandboxd's version, paths, branches and counters.")

    @OptionGroup var daemon: DaemonOptions

    func run() throws { try Self.run(daemon.client) }

    static func run(_ client: DaemonClient) throws(ExitCode) {
        let s = try client.call(.status)
        client.show(s) {
            let b = s["branches"], c = s["counters"]
            let uptime = Double(s["uptime_ms"]?.intValue ?? 0) / 1000
            printOut(table([
                ["sandboxd", "\(s["version"].display) (pid \(s["pid"].display), up \(uptime) s)"],
                ["socket", s["socket"].display],
                ["workspace", s["workspace"].display],
                ["state", s["state"].display],
                ["mount", s["mount"].display],
                ["branches", "\(b?["total"].display ?? "-") (active \(b?["active"].display ?? "-"), committed \(b?["committed"].display ?? "-"), "
                    + "aborted \(b?["aborted"].display ?? "-"), invalidated \(b?["invalidated"].display ?? "-"), frozen \(b?["frozen"].display ?? "-"))"],
                ["jails", s["jails"].display],
                ["shells", s["shells"].display],
                ["requests", "\(c?["requests"].display ?? "-") (errors \(c?["errors"].display ?? "-"), replays \(c?["replays"].display ?? "-"))"],
                ["commits", "\(c?["commits"].display ?? "-") (conflicts \(c?["conflicts"].display ?? "-"))"],
            ]))
        }
    }
}
