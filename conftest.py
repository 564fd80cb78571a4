# The real-parts fixtures shared by the functional and the Nova tests.
pytest_plugins = ['tests.fixtures']
