/// The methods sandboxd answers today (DESIGN §6), by wire name. Shared so that the daemon's
/// dispatch and sbx's calls cannot drift apart.
public enum Method: String, Sendable, CaseIterable {
    case branchCreate = "branch.create"
    case branchList = "branch.list"
    case branchInfo = "branch.info"
    case branchDiff = "branch.diff"
    case branchCommit = "branch.commit"
    case branchAbort = "branch.abort"
    case status
}

/// The version `status` reports.
public enum SandboxVersion {
    public static let current = "0.3.0-dev"
}
