"""
Tests for the route key C{protocol} (C{http}, C{grpc}, C{h2c}): parsed and
validated with file:line problems like the other keys, L{Route.http2_backend}
computed once, and C{explain} naming it.
"""

from __future__ import annotations

from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.routes.explain import explain_url
from edd_gateway.routes.loader import RoutesFileError, load_routes_text
from edd_gateway.routes.model import Route, Target
from edd_gateway.routes.table import RouteTable


def routes(body: str) -> list[Route]:
    return load_routes_text("routes:\n" + dedent(body), "routes.yaml")


def problems(body: str) -> list[str]:
    try:
        routes(body)
    except RoutesFileError as error:
        return [str(problem) for problem in error.errors]
    raise AssertionError("no problem reported")


class ProtocolKeyTests(SynchronousTestCase):
    def test_default_is_http(self) -> None:
        [route] = routes("- {host: a.com, path: /, target: 'a:80'}\n")
        self.assertEqual((route.protocol, route.http2_backend), ("http", False))

    def test_grpc_and_h2c(self) -> None:
        found = routes("""\
            - {host: a.com, path: /, target: 'a:50051', protocol: grpc}
            - {host: b.com, path: /, target: 'b:8080', protocol: h2c}
            - {host: c.com, path: /, target: 'c:80', protocol: http}
        """)
        self.assertEqual([(r.protocol, r.http2_backend) for r in found],
                         [("grpc", True), ("h2c", True), ("http", False)])

    def test_http2_backend_is_computed_not_given(self) -> None:
        route = Route(host="a.com", path="/", target=Target("a", 1), protocol="grpc")
        self.assertTrue(route.http2_backend)
        self.assertEqual(route, Route(host="a.com", path="/", target=Target("a", 1), protocol="grpc"))

    def test_unknown_protocol(self) -> None:
        self.assertEqual(problems("- {host: a.com, path: /, target: 'a:80', protocol: http2}\n"),
                         ["routes.yaml:2: protocol must be one of http, grpc, h2c"])

    def test_not_with_passthrough(self) -> None:
        [problem] = problems("- {host: a.com, path: /, target: 'a:443', tls: passthrough, protocol: grpc}\n")
        self.assertTrue(problem.startswith("routes.yaml:2: protocol: grpc needs tls: terminate"), problem)

    def test_not_with_an_internal_target(self) -> None:
        self.assertEqual(problems("- {host: a.com, path: /, target: 'internal:welcome', protocol: h2c}\n"),
                         ["routes.yaml:2: protocol: h2c needs a host:port target, not an internal one"])

    def test_the_problem_names_the_line_of_the_key(self) -> None:
        [problem] = problems("""\
            - host: a.com
              path: /
              target: a:80
              protocol: [grpc]
        """)
        self.assertEqual(problem, "routes.yaml:5: protocol must be one of http, grpc, h2c")

    def test_explain_names_it(self) -> None:
        table = RouteTable(routes("- {host: a.com, path: /pkg.Service, target: 'a:50051', protocol: grpc}\n"))
        lines, matched = explain_url(table, "http://a.com/pkg.Service/Echo")
        self.assertTrue(matched)
        self.assertIn("protocol grpc (HTTP/2 cleartext to the backend)", lines[-2])
