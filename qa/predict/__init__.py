"""Answering questions with a trained model: :class:`QuestionAnswerer` (the API) and ``python -m qa.predict``."""

from qa.predict.answerer import QuestionAnswerer, answers_of

__all__ = ["QuestionAnswerer", "answers_of"]
