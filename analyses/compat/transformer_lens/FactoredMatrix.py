"""TransformerLens's FactoredMatrix: hookgpt's, raising AssertionError where TL asserts."""

from hookgpt import factored


class FactoredMatrixAssertionError(AssertionError, ValueError):
    """A shape error, catchable as TL's AssertionError and as hookgpt's ValueError."""


class FactoredMatrix(factored.FactoredMatrix):
    shape_error = FactoredMatrixAssertionError
