import AIPagingTestSupport
import AIPagingCore
import AIPagingKernel
import Foundation
import Testing

extension Live {
    /// The probe socket's batched send, against the kernel: in a throwaway namespace, datagrams to
    /// a test address on its loopback.
    @Suite struct UDPBatchSend {
        @Test(.enabled(if: Shell.isRoot))
        func sendsEveryDatagramAtMostMaxPerCallASyscallAndCallsBackBetweenCalls() throws {
            try withNamespace("udpb") { ns in
                try ns.exec(["ip", "addr", "add", "198.18.0.1/32", "dev", "lo"])
                let target = IPAddress("198.18.0.1")!
                let receiver = try UDPBatchSocket(family: .ipv4, namespace: .named(ns.name), address: target)
                let sender = try UDPBatchSocket(family: .ipv4, namespace: .named(ns.name))
                var buffer: [UInt8] = []
                var items: [UDPBatchSocket.Outgoing] = []
                for i in 0..<37 {
                    items.append(.init(offset: buffer.count, length: 4, address: target, port: receiver.localPort, priority: nil))
                    buffer += [UInt8(i), 0xAB, 0xCD, 0xEF]
                }
                var between = 0
                let sent = try sender.send(items, buffer: buffer, maxPerCall: 16) { between += 1 }
                #expect(sent == 37)
                #expect(sender.lastSent == Array(0..<37))
                #expect(between == 2, "37 datagrams at 16 per call are 3 calls, with 2 gaps between them")
                var got: [UInt8] = []
                for _ in 0..<100 where got.count < 37 {
                    _ = try receiver.receive { bytes, _ in got.append(bytes[0]) }
                    if got.count < 37 { usleep(1000) }
                }
                #expect(got.sorted() == (0..<37).map { UInt8($0) })
            }
        }
    }
}
