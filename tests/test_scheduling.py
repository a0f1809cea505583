"""tests/conftest.py's scheduling under pytest-xdist: the tests of a shared trained
model run in one worker, the others a module at a time."""

from .conftest import MODULES_OF_SHARED_FIXTURES, scheduling_scope
from .scripts import ROOT


def test_modules_of_a_shared_fixture_are_one_scope():
    for fixture, modules in MODULES_OF_SHARED_FIXTURES.items():
        for module in modules:
            assert (ROOT / module).is_file(), module
            assert scheduling_scope(f"{module}::test_a[x]") == fixture
    other = "tests/deformable_detr/test_model.py"
    assert scheduling_scope(f"{other}::test_a") == scheduling_scope(f"{other}::test_b") == other


def test_every_user_of_a_shared_fixture_is_in_its_scope(request):
    """Over the tests of this run (all of them in `make test`): a test that uses a
    shared fixture lies in one of the fixture's modules; otherwise another worker
    would make the fixture again."""
    for item in request.session.items:
        for fixture in MODULES_OF_SHARED_FIXTURES:
            if fixture in item.fixturenames:
                assert scheduling_scope(item.nodeid) == fixture, (
                    f"{item.nodeid} uses {fixture}: add its module to "
                    "MODULES_OF_SHARED_FIXTURES in tests/conftest.py"
                )
