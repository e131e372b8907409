// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

let package = Package(
    name: "aipaging",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "aipaging-agent", targets: ["aipaging-agent"]),
        .executable(name: "aipagingctl", targets: ["aipagingctl"]),
        .executable(name: "aipaging-reflector", targets: ["aipaging-reflector"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-numerics.git", from: "1.1.1"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // C libraries through pkg-config and one shim for _GNU_SOURCE calls and macros.
        .systemLibrary(name: "CNFTables", pkgConfig: "libnftnl",
                       providers: [.apt(["libnftnl-dev", "libmnl-dev"])]),
        .systemLibrary(name: "CNetlinkRoute", pkgConfig: "libnl-route-3.0",
                       providers: [.apt(["libnl-3-dev", "libnl-route-3-dev"])]),
        .target(name: "CAIPagingShim"),

        // Pure core: lease model, validation, policy, admission, state machine, planner. No C.
        .target(name: "AIPagingCore",
                dependencies: [.product(name: "Crypto", package: "swift-crypto"),
                               .product(name: "RealModule", package: "swift-numerics")],
                swiftSettings: strict),

        // Thin kernel adapters: nftables, tc, conntrack, netns, timers. No policy.
        .target(name: "AIPagingKernel",
                dependencies: ["CNFTables", "CNetlinkRoute", "CAIPagingShim", "AIPagingCore"],
                swiftSettings: strict),

        // The daemon's parts: control API, lease service, reconciler.
        .target(name: "AIPagingAgent",
                dependencies: [
                    "AIPagingCore", "AIPagingKernel", "CAIPagingShim",
                    .product(name: "NIOCore", package: "swift-nio"),
                    .product(name: "NIOPosix", package: "swift-nio"),
                    .product(name: "NIOHTTP1", package: "swift-nio"),
                    .product(name: "Logging", package: "swift-log"),
                    .product(name: "CoreMetrics", package: "swift-metrics"),
                    .product(name: "Prometheus", package: "swift-prometheus"),
                ],
                swiftSettings: strict),

        // Blocking HTTP/1.1 client over a Unix socket (aipagingctl, tests, benchmarks).
        .target(name: "AIPagingClient", swiftSettings: strict),

        .executableTarget(name: "aipaging-agent",
                          dependencies: [
                            "AIPagingAgent",
                            .product(name: "ArgumentParser", package: "swift-argument-parser"),
                          ],
                          swiftSettings: strict),
        // STAMP Session-Reflector (RFC 8762) to run on anchors.
        .executableTarget(name: "aipaging-reflector",
                          dependencies: ["AIPagingCore", "AIPagingKernel"],
                          swiftSettings: strict),
        .executableTarget(name: "aipagingctl",
                          dependencies: [
                            "AIPagingCore",
                            "AIPagingClient",
                            .product(name: "ArgumentParser", package: "swift-argument-parser"),
                            .product(name: "Crypto", package: "swift-crypto"),
                          ],
                          swiftSettings: strict),

        // Benchmarks (print figures; never timing assertions): `swift run -c release NFTBench`.
        .executableTarget(name: "NFTBench", dependencies: ["AIPagingKernel", "AIPagingCore"],
                          path: "Benchmarks/NFTBench", swiftSettings: strict),

        // Test helpers shared by the test targets (shell, throwaway namespaces, the lab).
        .target(name: "AIPagingTestSupport", path: "Tests/AIPagingTestSupport", swiftSettings: strict),

        .executableTarget(name: "EnforceBench", dependencies: ["AIPagingClient", "AIPagingCore", "CAIPagingShim"],
                          path: "Benchmarks/EnforceBench", swiftSettings: strict),

        .executableTarget(name: "RestartBench", dependencies: ["AIPagingClient", "AIPagingCore"],
                          path: "Benchmarks/RestartBench", swiftSettings: strict),

        .testTarget(name: "AIPagingCoreTests", dependencies: ["AIPagingCore"], swiftSettings: strict),
        .testTarget(name: "AIPagingKernelTests", dependencies: ["AIPagingKernel", "AIPagingCore", "AIPagingTestSupport"],
                    swiftSettings: strict),
        .testTarget(name: "AIPagingAgentTests",
                    dependencies: ["AIPagingAgent", "AIPagingCore", "AIPagingKernel", "AIPagingClient", "AIPagingTestSupport", "CAIPagingShim"],
                    resources: [],
                    swiftSettings: strict),
    ]
)
