import AIPagingTestSupport
import Foundation
@testable import AIPagingKernel
import AIPagingCore

/// Shared fixtures for the NFTables tests.
enum NFT {
    static func ip(_ s: String) -> IPAddress { IPAddress(s)! }

    static func key(_ c: String, _ s: String, _ p: NFTL4Protocol, _ port: UInt16) -> NFTSteeringKey {
        NFTSteeringKey(client: ip(c), service: ip(s), proto: p, port: port)!
    }

    static let mark1 = AIPagingNFT.leaseMark(slot: 1)
    static let mark2 = AIPagingNFT.leaseMark(slot: 2)
    static let mark3 = AIPagingNFT.leaseMark(slot: 3)

    /// A fresh namespace with an `NFTablesSocket` in it; the namespace is destroyed afterwards.
    static func withNamespace<T>(_ prefix: String, _ body: (TestNamespace, NFTablesSocket) throws -> T) throws -> T {
        let ns = try TestNamespace(prefix: prefix)
        defer { ns.destroy() }
        let socket = try NFTablesSocket(namespace: .named(ns.name))
        return try body(ns, socket)
    }

    /// Commits the schema alone.
    static func createSchema(_ socket: NFTablesSocket) throws {
        let tx = NFTTransaction()
        tx.createAIPagingTable()
        try socket.commit(tx)
    }

    /// Commits `count` leases' qos elements (marks 0xa1000001 onwards, 60 s timeouts).
    static func addQoSElements(_ socket: NFTablesSocket, count: Int) throws {
        let tx = NFTTransaction()
        for i in 0..<count { tx.addQoS(mark: 0xa100_0000 | UInt32(i + 1), classid: 0x0100_0002, timeoutMs: 60_000) }
        try socket.commit(tx)
    }

    /// `nft list ...` output with the parts that change from run to run removed
    /// (`expires 4m59s992ms`).
    static func normalize(_ text: String) -> String {
        text.replacingOccurrences(of: #" expires [0-9dhms]+"#, with: "", options: .regularExpression)
    }

    /// The elements the golden test adds (5-minute timeouts).
    static func addGoldenElements(_ tx: NFTTransaction) {
        tx.addSteering(key("198.18.1.2", "198.18.100.10", .udp, 7000), mark: mark1, timeoutMs: 300_000)
        tx.addSteering(key("198.18.1.3", "198.18.100.10", .tcp, 443), mark: mark2, timeoutMs: 300_000)
        tx.addSteering(key("2001:db8:1::2", "2001:db8:100::10", .tcp, 443), mark: mark3, timeoutMs: 300_000)
        tx.addAnchor(mark: mark1, address: ip("198.18.2.2"), port: 7000, timeoutMs: 300_000)
        tx.addAnchor(mark: mark2, address: ip("198.18.2.3"), port: 8443, timeoutMs: 300_000)
        tx.addAnchor(mark: mark3, address: ip("2001:db8:2::2"), port: 443, timeoutMs: 300_000)
        tx.addQoS(mark: mark1, classid: 0x0100_0005, timeoutMs: 300_000)
        tx.addQoS(mark: mark3, classid: 0x0001_0010, timeoutMs: 300_000)
    }

    /// `nft list table inet aipaging` after `createAIPagingTable` + `addGoldenElements`, with
    /// `expires` normalised away. It is also valid `nft -f` input.
    static let golden = """
    table inet aipaging {
    \tcomment "aipaging schema 2"
    \tmap lease4 {
    \t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service : mark
    \t\tflags timeout
    \t\telements = { 198.18.1.2 . 198.18.100.10 . udp . 7000 timeout 5m : 0xa1000001,
    \t\t\t     198.18.1.3 . 198.18.100.10 . tcp . 443 timeout 5m : 0xa1000002 }
    \t}

    \tmap lease6 {
    \t\ttype ipv6_addr . ipv6_addr . inet_proto . inet_service : mark
    \t\tflags timeout
    \t\telements = { 2001:db8:1::2 . 2001:db8:100::10 . tcp . 443 timeout 5m : 0xa1000003 }
    \t}

    \tmap anchor4 {
    \t\ttype mark : ipv4_addr . inet_service
    \t\tflags timeout
    \t\telements = { 0xa1000001 timeout 5m : 198.18.2.2 . 7000, 0xa1000002 timeout 5m : 198.18.2.3 . 8443 }
    \t}

    \tmap anchor6 {
    \t\ttype mark : ipv6_addr . inet_service
    \t\tflags timeout
    \t\telements = { 0xa1000003 timeout 5m : 2001:db8:2::2 . 443 }
    \t}

    \tmap qos {
    \t\ttype mark . ct_dir : classid
    \t\tflags timeout
    \t\tcounter
    \t\telements = { 0xa1000001 . original counter packets 0 bytes 0 timeout 5m : 100:5,
    \t\t\t     0xa1000003 . original counter packets 0 bytes 0 timeout 5m : 1:10,
    \t\t\t     0xa1000001 . reply counter packets 0 bytes 0 timeout 5m : none,
    \t\t\t     0xa1000003 . reply counter packets 0 bytes 0 timeout 5m : none }
    \t}

    \tchain steer {
    \t\ttype filter hook prerouting priority mangle; policy accept;
    \t\tct status ! confirmed ct mark set ip saddr . ip daddr . meta l4proto . th dport map @lease4
    \t\tct status ! confirmed ct mark set ip6 saddr . ip6 daddr . meta l4proto . th dport map @lease6
    \t}

    \tchain nat {
    \t\ttype nat hook prerouting priority dstnat; policy accept;
    \t\tmeta l4proto tcp ct mark 0xa1000000/8 dnat ip to ct mark map @anchor4
    \t\tmeta l4proto udp ct mark 0xa1000000/8 dnat ip to ct mark map @anchor4
    \t\tmeta l4proto tcp ct mark 0xa1000000/8 dnat ip6 to ct mark map @anchor6
    \t\tmeta l4proto udp ct mark 0xa1000000/8 dnat ip6 to ct mark map @anchor6
    \t}

    \tchain gate {
    \t\ttype filter hook forward priority filter - 10; policy accept;
    \t\tct mark != 0xa1000000/8 accept
    \t\tmeta priority set ct mark . ct direction map @qos accept
    \t\tcounter packets 0 bytes 0 drop
    \t}
    }

    """

    /// The schema alone (no elements), as `nft -f` input.
    static var schemaOnly: String {
        golden.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.contains("elements = {") && !$0.hasPrefix("\t\t\t     ") }
            .joined(separator: "\n")
    }
}
