"""The stages of the original design, one module each.

==========================  ==============================================
original stage              module
==========================  ==============================================
DataExtractionAnalysis      `trainer.stages.extraction`
DataPreparation             `trainer.stages.preparation`
ModelSelection              `trainer.stages.selection`
ModelTraining               `trainer.stages.training`
ModelEvaluationValidation   `trainer.stages.evaluation`
TrainedMLModel              `trainer.stages.trained_model`
==========================  ==============================================
"""
