import AIPagingTestSupport
import Foundation
import Testing
import AIPagingKernel
import AIPagingCore

extension Live {
    /// RTM_GETROUTE inside a namespace, compared with `ip route get`.
    @Suite struct TCRouteLookup {
        @Test(.enabled(if: Shell.isRoot))
        func routeLookupV4V6AndNoRoute() throws {
            try RouterLab.with("rt") { lab in
                let router = try RouteSocket(namespace: .named(lab.router.name))
                let client = try RouteSocket(namespace: .named(lab.client.name))

                let toAnchor = try router.route(to: IPAddress(RouterLab.anchorV4)!)
                #expect(toAnchor.interfaceName == "r1")
                #expect(toAnchor.ifindex == (try router.interfaceIndex(named: "r1")))
                #expect(toAnchor.gateway == nil)
                #expect(toAnchor.preferredSource == IPAddress(RouterLab.routerAnchorV4))
                #expect(toAnchor.type == .unicast)
                #expect(try lab.router.exec(["ip", "route", "get", RouterLab.anchorV4]).contains("dev r1"))

                let toClient6 = try router.route(to: IPAddress(RouterLab.clientV6)!)
                #expect(toClient6.interfaceName == "r0")
                #expect(try lab.router.exec(["ip", "-6", "route", "get", RouterLab.clientV6]).contains("dev r0"))

                // Via a gateway (the client's default routes).
                let viaV4 = try client.route(to: IPAddress(RouterLab.anchorV4)!)
                #expect(viaV4.interfaceName == "c0")
                #expect(viaV4.gateway == IPAddress(RouterLab.routerClientV4))
                let viaV6 = try client.route(to: IPAddress(RouterLab.anchorV6)!)
                #expect(viaV6.interfaceName == "c0")
                #expect(viaV6.gateway == IPAddress(RouterLab.routerClientV6))
                print("client:", viaV4, "|", viaV6)

                // Own address: a local route through lo.
                let local = try router.route(to: IPAddress(RouterLab.routerAnchorV4)!)
                #expect(local.type == .local)
                #expect(local.interfaceName == "lo")

                // No route: the router has no default route.
                for missing in ["198.19.99.1", "2001:db8:99::1"] {
                    let error = try #require(throws: KernelError.self) { try router.route(to: IPAddress(missing)!) }
                    print("no route:", error)
                    #expect(error.errno == ENETUNREACH)
                    #expect(error.detail.contains("no route to \(missing)"))
                }

                // Latency (printed): route + name = two round trips.
                for (name, address) in [("v4", RouterLab.anchorV4), ("v6", RouterLab.anchorV6)] {
                    let a = IPAddress(address)!
                    let n = 2000
                    let t = try measure { for _ in 0..<n { _ = try router.route(to: a) } }
                    print("route lookup \(name) (RTM_GETROUTE + RTM_GETLINK): \(fmtMicros(t / Double(n))) per lookup")
                }
                let idx = toAnchor.ifindex
                let n = 2000
                let t = try measure { for _ in 0..<n { _ = try router.interfaceName(index: idx) } }
                print("interface name lookup (RTM_GETLINK): \(fmtMicros(t / Double(n)))")
            }
        }
    }
}
