// The plugin SDK in one include.
#pragma once

#include "moelab/analyzer.h"
#include "moelab/config.h"
#include "moelab/context.h"
#include "moelab/dataset.h"
#include "moelab/embedder.h"
#include "moelab/files.h"
#include "moelab/log.h"
#include "moelab/model.h"
#include "moelab/objective.h"
#include "moelab/prompt.h"
#include "moelab/plugin.h"
#include "moelab/safetensors.h"
#include "moelab/sampler.h"
#include "moelab/stage.h"
#include "moelab/tokenizer.h"
#include "moelab/transform.h"
