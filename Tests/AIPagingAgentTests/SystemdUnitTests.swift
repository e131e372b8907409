import AIPagingTestSupport
import Foundation
import Testing

/// The shipped unit files, checked by systemd's own tools without booting anything:
/// `systemd-analyze verify` must be silent and `systemd-analyze security --offline=yes` must
/// keep the exposure at or below 2.1. (scripts/test-systemd runs the units under a real systemd.)
let systemdAnalyzeAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze")

@Suite(.enabled(if: systemdAnalyzeAvailable)) struct SystemdUnitTests {
    /// The units copied to a temporary directory with ExecStart= pointing at the built agent
    /// (verify checks that the command exists and is executable).
    func stagedUnits() throws -> String {
        let dir = NSTemporaryDirectory() + "aipaging-units-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let agent = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("aipaging-agent").path
        let binary = FileManager.default.isExecutableFile(atPath: agent) ? agent : "/bin/true"
        for name in ["aipaging-agent.service", "aipaging-agent.socket"] {
            let text = try String(contentsOfFile: ScriptLab.repoRoot + "/systemd/" + name, encoding: .utf8)
            try text.replacingOccurrences(of: "/usr/local/bin/aipaging-agent", with: binary)
                .write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
        }
        return dir
    }

    @Test func unitsVerifyClean() throws {
        let dir = try stagedUnits()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // verify prints its findings on stderr and fails on errors; Shell.run throws with them.
        let out = try Shell.sh("cd \(dir) && systemd-analyze verify ./aipaging-agent.service ./aipaging-agent.socket 2>&1")
        #expect(out.isEmpty, "systemd-analyze verify: \(out)")
    }

    @Test func securityExposureStaysLow() throws {
        let dir = try stagedUnits()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try Shell.sh("cd \(dir) && systemd-analyze security --offline=yes --no-pager ./aipaging-agent.service 2>&1")
        guard let r = out.range(of: "Overall exposure level for aipaging-agent.service: "),
              let score = Double(out[r.upperBound...].prefix { $0 == "." || $0.isNumber }) else {
            Issue.record("no exposure level in: \(out)")
            return
        }
        // 2.1: 2.0 before the lease thread's scheduling (setpriority and sched_setattr, of
        // @resources, cost 0.2; see the README's Hardening section).
        #expect(score <= 2.1, "exposure \(score):\n\(out)")
        // The capabilities are exactly the two the agent needs.
        #expect(out.contains("CapabilityBoundingSet=~CAP_SYS_PTRACE") && !out.contains("✗ CapabilityBoundingSet=~CAP_SYS_PTRACE"))
        #expect(out.contains("✓ NoNewPrivileges="))
        #expect(out.contains("✓ User=/DynamicUser="))
    }
}
