#if canImport(Glibc)
import Glibc
#endif

/// Phase timings on stderr when SBX_TRACE is set (as `sbx run` does for the jail launch).
struct Trace {
    static let enabled = getenv("SBX_TRACE") != nil
    let what: String
    var last = Trace.now()
    var marks: [(String, Double)] = []

    init(_ what: String) { self.what = what }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) * 1000 + Double(t.tv_nsec) / 1e6
    }

    mutating func mark(_ phase: String) {
        guard Trace.enabled else { return }
        let t = Trace.now()
        marks.append((phase, t - last))
        last = t
    }

    func report() {
        guard Trace.enabled else { return }
        let text = "sbx-trace \(what): " + marks.map { "\($0.0) \(String(Int($0.1 * 1000))) us" }.joined(separator: ", ") + "\n"
        _ = text.withCString { write(2, $0, strlen($0)) }
    }
}
